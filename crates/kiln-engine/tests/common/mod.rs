//! The device the tests on a real backend run on: `KILN_TEST_DEVICE` (cpu, cuda, cuda:N; the
//! CPU by default), with the developers' switches of `KILN_TEST_DEV` (comma-separated
//! NAME=VALUE, as `kiln --dev` takes them: `cpu-isa=avx2`, `cuda-gqa=all`, ...) and, on a GPU,
//! `KILN_TEST_GPU_WEIGHTS` (`f16` or `quantized`, as `--gpu-weights`).

#![allow(dead_code)]

use kiln_engine::device::{DevOptions, Device, DeviceKind, DeviceOptions, GpuWeights};

/// The kind of device the tests run on.
pub fn test_kind() -> DeviceKind {
    std::env::var("KILN_TEST_DEVICE").map_or(DeviceKind::Cpu, |s| {
        DeviceKind::parse(&s).unwrap_or_else(|e| panic!("KILN_TEST_DEVICE: {e}"))
    })
}

/// The device the tests run on, with `threads` CPU threads (0: one per core).
pub fn test_device(threads: usize) -> Device {
    let kind = test_kind();
    let mut dev = DevOptions::default();
    for spec in std::env::var("KILN_TEST_DEV")
        .unwrap_or_default()
        .split(',')
    {
        if !spec.trim().is_empty() {
            dev.set(spec.trim())
                .unwrap_or_else(|e| panic!("KILN_TEST_DEV: {e}"));
        }
    }
    let gpu_weights = std::env::var("KILN_TEST_GPU_WEIGHTS").map_or(GpuWeights::F16, |s| {
        GpuWeights::parse(&s).unwrap_or_else(|e| panic!("KILN_TEST_GPU_WEIGHTS: {e}"))
    });
    let opts = DeviceOptions {
        threads,
        dev,
        gpu_weights,
        ..Default::default()
    };
    Device::open_with(kind, &opts).unwrap_or_else(|e| panic!("opening {kind:?}: {e}"))
}
