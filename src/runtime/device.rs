//! The devices kiln runs on ([`DeviceKind`]).

use burn::prelude::*;

/// Which device to run on (also the values of the command line's `--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// Burn's pure-Rust CPU backend (`flex`).
    Cpu,
    /// The best Vulkan device through Burn's Vulkan runtime (cargo feature `gpu`): a discrete GPU
    /// first; `CUBECL_WGPU_DEFAULT_DEVICE` (e.g. `DiscreteGpu(1)`, `Cpu`) picks another.
    #[cfg(feature = "gpu")]
    Gpu,
    /// The first CUDA GPU through Burn's CUDA runtime (cargo feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
    /// The best wgpu device on any graphics API, with the WGSL compiler (cargo feature `wgpu`).
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl DeviceKind {
    /// The Burn device; with `autodiff` gradients are recorded.
    pub fn device(self, autodiff: bool) -> Device {
        let d = match self {
            DeviceKind::Cpu => Device::flex(),
            #[cfg(feature = "gpu")]
            DeviceKind::Gpu => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Device::cuda(0),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        };
        if autodiff {
            d.autodiff()
        } else {
            d
        }
    }

    /// Whether the device can be used: runs one tiny computation on it. Burn's GPU runtimes
    /// panic when no adapter (or driver library) is found, from a thread of their own; this
    /// catches that and returns the runtime's message instead, so the command line reports a
    /// clear error rather than a backtrace. The CPU is always usable.
    pub fn probe(self) -> Result<(), String> {
        use std::sync::{Arc, Mutex};
        if self == DeviceKind::Cpu {
            return Ok(());
        }
        let first: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = Arc::clone(&first);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let mut m = seen.lock().unwrap_or_else(|e| e.into_inner());
            if m.is_none() {
                let payload = info.payload();
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown error".into());
                *m = Some(text);
            }
        }));
        let result = std::panic::catch_unwind(|| {
            let t = Tensor::<1>::ones([4], &self.device(false));
            t.sum().into_scalar::<f32>()
        });
        std::panic::set_hook(previous);
        let message = first.lock().unwrap_or_else(|e| e.into_inner()).take();
        match result {
            Ok(4.0) => Ok(()),
            Ok(s) => Err(format!("{self:?}: a test sum gave {s} instead of 4")),
            Err(_) => Err(format!(
                "{self:?}: {}",
                message.unwrap_or_else(|| "the device could not be initialized".into())
            )),
        }
    }
}

/// Whether `device` is the CPU (Burn's `flex` backend, with or without autodiff): the runtime
/// picks its CPU defaults there (a KV cache that grows by concatenation, dropout keys from the
/// device's generator) and its GPU ones elsewhere.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}
