//! Device selection: `auto|wgpu|vulkan|metal|dx12|cpu`, probed without panicking.
//!
//! `auto` takes a hardware GPU adapter found through wgpu and otherwise the CPU (a software
//! rasterizer such as llvmpipe is slower than the fused CPU engine), and logs which. A device that
//! is named but missing is an error that says what was looked for.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use burn::tensor::Device;
use burn::tensor::wgpu::{WgpuBackend, wgpu::DeviceType};

use crate::config::ModelConfig;
use crate::engine::burn_ref::BurnEngine;
use crate::engine::cpu::CpuEngine;
use crate::engine::wgpu_fused::WgpuFusedEngine;
use crate::engine::{Engine, EngineKind};
use crate::error::ModelError;

/// The device a user asks for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU through wgpu if there is one, else the CPU.
    #[default]
    Auto,
    /// wgpu with whatever adapter and graphics API it picks (software adapters included).
    Wgpu,
    /// wgpu pinned to Vulkan.
    Vulkan,
    /// wgpu pinned to Metal.
    Metal,
    /// wgpu pinned to DirectX 12.
    Dx12,
    /// The CPU.
    Cpu,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
            Self::Dx12 => "dx12",
            Self::Cpu => "cpu",
        })
    }
}

/// A resolved compute device.
#[derive(Debug, Clone)]
pub enum Compute {
    /// The CPU.
    Cpu,
    /// A wgpu adapter.
    Wgpu {
        /// Burn's device for it.
        device: Device,
        /// Adapter name, type and graphics API, for logs.
        adapter: String,
    },
}

impl Compute {
    /// A short description for logs and metrics.
    pub fn describe(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Wgpu { adapter, .. } => format!("wgpu ({adapter})"),
        }
    }
}

/// A probed adapter: Burn's device, its description, and whether it is a software rasterizer.
type Probe = Result<(Device, String, bool), String>;

fn probe(api: WgpuBackend) -> Probe {
    let (device, setup) = Device::wgpu_options()
        .graphics_api(api)
        .init_with_setup()
        .map_err(|e| e.to_string())?;
    let info = setup.adapter.get_info();
    let software = info.device_type == DeviceType::Cpu;
    let desc = format!("{} [{:?}, {:?}]", info.name, info.device_type, info.backend);
    Ok((device, desc, software))
}

/// Whether wgpu sees a hardware adapter (anything but a software rasterizer), asked without
/// bringing a device up: a device that is not used would keep a server thread waking up in this
/// process for nothing.
fn hardware_adapter() -> bool {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .any(|a| a.get_info().device_type != DeviceType::Cpu)
}

/// Runs a future to completion on this thread.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Resolves `choice`, probing wgpu at most once per graphics API in this process.
pub fn resolve(choice: DeviceChoice) -> Result<Compute, ModelError> {
    if choice == DeviceChoice::Auto && !hardware_adapter() {
        tracing::info!("device auto: no hardware GPU adapter, using the CPU");
        return Ok(Compute::Cpu);
    }
    static CACHE: OnceLock<Mutex<HashMap<DeviceChoice, Probe>>> = OnceLock::new();
    let api = match choice {
        DeviceChoice::Cpu => return Ok(Compute::Cpu),
        DeviceChoice::Auto | DeviceChoice::Wgpu => WgpuBackend::Auto,
        DeviceChoice::Vulkan => WgpuBackend::Vulkan,
        DeviceChoice::Metal => WgpuBackend::Metal,
        DeviceChoice::Dx12 => WgpuBackend::Dx12,
    };
    let key = if choice == DeviceChoice::Auto {
        DeviceChoice::Wgpu
    } else {
        choice
    };
    let probed = {
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.entry(key).or_insert_with(|| probe(api)).clone()
    };
    match (choice, probed) {
        (DeviceChoice::Auto, Ok((device, adapter, false))) => {
            tracing::info!(%adapter, "device auto: using the GPU adapter");
            Ok(Compute::Wgpu { device, adapter })
        }
        (DeviceChoice::Auto, Ok((_, adapter, true))) => {
            tracing::info!(%adapter, "device auto: only a software adapter found, using the CPU");
            Ok(Compute::Cpu)
        }
        (DeviceChoice::Auto, Err(e)) => {
            tracing::info!(cause = %e, "device auto: no wgpu adapter, using the CPU");
            Ok(Compute::Cpu)
        }
        (_, Ok((device, adapter, _))) => {
            tracing::info!(%adapter, requested = %choice, "using wgpu adapter");
            Ok(Compute::Wgpu { device, adapter })
        }
        (_, Err(e)) => Err(ModelError::Device {
            requested: choice.to_string(),
            msg: e,
        }),
    }
}

/// Builds the engine `kind` on `compute` for `cfg`; `threads` applies to the CPU engine.
pub fn make_engine(
    kind: EngineKind,
    compute: &Compute,
    cfg: &ModelConfig,
    threads: usize,
) -> Result<Box<dyn Engine>, ModelError> {
    Ok(match (kind, compute) {
        (EngineKind::Fused, Compute::Cpu) => Box::new(CpuEngine::new(cfg, threads)),
        (EngineKind::Burn, Compute::Cpu) => {
            Box::new(BurnEngine::new(cfg, Device::flex(), "flex (cpu)"))
        }
        (EngineKind::Burn, Compute::Wgpu { device, adapter }) => Box::new(BurnEngine::new(
            cfg,
            device.clone(),
            format!("wgpu {adapter}"),
        )),
        (EngineKind::Fused, Compute::Wgpu { device, adapter }) => {
            Box::new(WgpuFusedEngine::new(cfg, device, adapter)?)
        }
    })
}
