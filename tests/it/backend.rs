//! Backend choice: why `auto` passes over CUDA and wgpu, and the golden checks that
//! scripts/gpu-check.sh runs on GPUs (`dcae parity`), here on the CPU.

use std::process::Command;

use dcae::engine::backend::{cuda_library_problem, run_on, BackendChoice, BackendInfo, BackendTask};

use super::common::fixture;

struct Which;

impl BackendTask for Which {
    type Output = BackendInfo;
    fn run<B: burn::tensor::backend::Backend>(self, _: B::Device, info: BackendInfo) -> BackendInfo {
        info
    }
}

#[test]
fn auto_says_why_each_backend_was_skipped() {
    // The reasons from what a loader finds, the same on every machine.
    let none = cuda_library_problem(&mut |_| false);
    let driver_only = cuda_library_problem(&mut |name| name.starts_with("libcuda") || name == "nvcuda.dll");
    let both = cuda_library_problem(&mut |_| true);
    if cfg!(target_os = "linux") {
        assert_eq!(none.as_deref(), Some("libcuda.so.1 not found (no NVIDIA driver)"));
        let msg = driver_only.expect("NVRTC missing is a problem");
        assert!(msg.contains("NVRTC (libnvrtc.so)") && msg.contains("LD_LIBRARY_PATH"), "{msg}");
        assert_eq!(both, None);
    }

    // This machine: whatever `auto` picks, every backend it prefers to that one has a reason,
    // and none is given for the one that runs (so a CUDA machine passes too).
    let info = run_on(BackendChoice::Auto, Which).unwrap();
    eprintln!("auto: {info}; skipped: {:?}", info.skipped);
    let prefixes: &[&str] = match info.kind {
        "cuda" => &[],
        "wgpu" => &["cuda: "],
        _ => &["cuda: ", "wgpu: "],
    };
    assert_eq!(info.skipped.len(), prefixes.len(), "{:?}", info.skipped);
    for (s, p) in info.skipped.iter().zip(prefixes) {
        assert!(s.starts_with(p) && s.len() > p.len() + 5, "{s}");
    }
    // Asked for by name, nothing is skipped.
    assert!(run_on(BackendChoice::Cpu, Which).unwrap().skipped.is_empty());

    // The CLI reports the reasons under its backend line.
    let out = Command::new(env!("CARGO_BIN_EXE_dcae"))
        .args(["parity", "--backend", "auto", "--only", "ae-tiny-in", "--fixtures"])
        .arg(fixture(""))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in prefixes {
        assert!(stderr.contains(&format!("  skipped {p}")), "{stderr}");
    }
}

/// `dcae parity` on the CPU: every golden check passes, one JSON line each.
#[test]
fn parity_command_passes_on_the_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_dcae")).args(["parity", "--backend", "cpu", "--json", "--fixtures"]).arg(fixture("")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let checks: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(checks.len(), 10, "{stdout}");
    for c in &checks {
        assert_eq!(c["pass"], true, "{c}");
        assert!(c["max_abs_err"].as_f64().is_some_and(|e| e <= c["tol"].as_f64().unwrap()), "{c}");
    }

    // A folder without the fixtures is an error that says what to pass.
    let out = Command::new(env!("CARGO_BIN_EXE_dcae")).args(["parity", "--backend", "cpu", "--fixtures", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --fixtures"));
}
