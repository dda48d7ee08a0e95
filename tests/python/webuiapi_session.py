"""A session of the `webuiapi` client (the A1111 web UI's Python API package, from PyPI)
against `dcae serve` on 127.0.0.1:<port>, with the tiny fixture models. Run by
tests/it/serve.rs (serve_speaks_to_the_webuiapi_client); exits non-zero on the first failure.

    python webuiapi_session.py PORT
"""
import sys
import threading
import time

import webuiapi

port = int(sys.argv[1])
api = webuiapi.WebUIApi(host="127.0.0.1", port=port, steps=2)

names = api.util_get_model_names()
assert "uvit-tiny" in names and "sana-tiny" in names, names
print("models:", names)

# txt2img with a SANA pipeline.
api.util_set_model("sana-tiny")
assert api.util_get_current_model() == "sana-tiny", api.get_options()
r = api.txt2img(prompt="a red apple on a wooden table", negative_prompt="blurry", seed=11,
                width=64, height=96, cfg_scale=4.5)
assert len(r.images) == 1 and r.image.size == (64, 96), (len(r.images), r.image.size)
assert r.info["all_seeds"] == [11], r.info
assert "a red apple" in r.info["infotexts"][0], r.info["infotexts"]
assert "a red apple" in r.image.info.get("parameters", ""), r.image.info
print("sana txt2img:", r.image.size, r.info["sampler_name"])

# txt2img with a class model: the prompt is an ImageNet class.
api.util_set_model("uvit-tiny")
r = api.txt2img(prompt="goldfish", seed=3, cfg_scale=1.5, batch_size=2)
assert len(r.images) == 2, len(r.images)
assert r.info["sd_model_name"] == "uvit-tiny", r.info
assert "goldfish" in r.info["infotexts"][0], r.info["infotexts"]
side = r.image.size
print("class txt2img:", side, r.info["infotexts"][0].splitlines()[0])

# img2img from that result.
r2 = api.img2img(images=[r.image], prompt="tench", denoising_strength=0.5, seed=4)
assert len(r2.images) == 1 and r2.image.size == side, (len(r2.images), r2.image.size)
assert r2.info["denoising_strength"] == 0.5, r2.info
print("img2img:", r2.image.size)

# Progress while a long run goes, then interrupt: the run returns what it finished.
result = {}
def long_run():
    result["r"] = api.txt2img(prompt="tench", seed=5, steps=50, batch_size=16, n_iter=16)
t = threading.Thread(target=long_run)
t.start()
seen = None
deadline = time.time() + 120
while time.time() < deadline:
    p = api.get_progress()
    if p["state"]["job"] and p["progress"] > 0:
        seen = p
        break
    time.sleep(0.05)
assert seen is not None, "no progress seen"
assert seen["state"]["job_count"] >= 1 and 0 < seen["progress"] <= 1 and seen["eta_relative"] >= 0, seen
print("progress:", round(seen["progress"], 3), "step", seen["state"]["sampling_step"], "of", seen["state"]["sampling_steps"])
api.interrupt()
t.join(120)
assert not t.is_alive(), "the interrupted run did not return"
r3 = result["r"]
assert r3.info["interrupted"] is True, r3.info
assert len(r3.images) < 256, len(r3.images)
print("interrupted after", len(r3.images), "images")
api.util_wait_for_ready(check_interval=0.1)
print("webuiapi session passed")
