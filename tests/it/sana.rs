//! SANA: transformer forwards, the flow samplers, pipeline loading and the CLI against the sana-tiny goldens.
