//! The GPU context: adapter choice, device creation with the features we can use, a pipeline cache
//! keyed by shader specialisation, buffer helpers and error capture.

pub(crate) mod readback;
pub mod shader;

pub use readback::read_buffer;
pub(crate) use shader::shader_struct;
pub use shader::{BindingKind, Const, ShaderSpec};

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// How to pick the adapter. The defaults take the best adapter of the backends that
/// `WGPU_BACKEND` allows (all when unset), or the one `WGPU_ADAPTER_NAME` names.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to these backends (overrides `WGPU_BACKEND`).
    pub backends: Option<wgpu::Backends>,
    /// Index into the adapter list that `diffattn adapters` prints.
    pub adapter_index: Option<usize>,
    /// Case-insensitive substring of the adapter name (overrides `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Do not request SHADER_F16 even where the adapter has it (to test the f32-only path).
    pub disable_f16: bool,
    /// Do not use cooperative matrices even where the adapter has them (to test the portable path).
    pub disable_coop: bool,
    /// A directory for compiled pipelines (native Vulkan): read when the device opens, written by
    /// [`Gpu::save_pipeline_cache`], so that a second start skips the driver's shader compilation.
    /// `None` keeps nothing on disk.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
    /// Lowers the storage-binding limit to this many bytes (never raises it): runs natively what
    /// an adapter with smaller bindings (a browser's 128 MiB) would, such as an embedding split
    /// across bindings.
    pub max_storage_binding: Option<u64>,
}

/// Parses a backend name as the CLI accepts it.
pub fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "webgpu" | "browser" => Ok(wgpu::Backends::BROWSER_WEBGPU),
        other => Err(Error::config(format!(
            "unknown backend `{other}` (expected vulkan, gl, metal, dx12)"
        ))),
    }
}

/// What `diffattn adapters` prints about one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// `subgroupBarrier()`: a native backend's subgroups (Vulkan, Metal).
    pub subgroup_barrier: bool,
    pub subgroup_sizes: (u32, u32),
    pub timestamps: bool,
    pub cooperative_matrix: bool,
    /// The 16x16x16 f16 x f16 -> f32 cooperative-matrix shape the tensor-core kernels use.
    pub coop_f16_16x16: bool,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
}

impl AdapterSummary {
    // The browser build reports its one adapter through `gpuInfo`, not this list.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    fn new(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let f = adapter.features();
        let l = adapter.limits();
        Self {
            index,
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            subgroup_barrier: f.contains(wgpu::Features::SUBGROUP_BARRIER),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix: f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            coop_f16_16x16: has_coop_f16_16x16(adapter),
            max_workgroup_storage: l.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_storage_binding: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
        }
    }
}

fn instance(opts: &GpuOptions) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(backends) = opts.backends {
        desc.backends = backends;
    }
    wgpu::Instance::new(desc)
}

/// Higher is better: real GPUs before software ones, native APIs before GL.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 2,
        wgpu::Backend::BrowserWebGpu => 2,
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (ty, api)
}

/// Every adapter of the allowed backends, in a stable order (the order `--adapter N` refers to).
#[cfg(not(target_arch = "wasm32"))]
pub async fn list_adapters(opts: &GpuOptions) -> Vec<AdapterSummary> {
    let inst = instance(opts);
    let backends = inst_backends(opts);
    inst.enumerate_adapters(backends)
        .await
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::new(i, a))
        .collect()
}

#[cfg(not(target_arch = "wasm32"))]
fn inst_backends(opts: &GpuOptions) -> wgpu::Backends {
    opts.backends
        .unwrap_or_else(|| wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()))
}

#[cfg(not(target_arch = "wasm32"))]
async fn choose_adapter(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let inst = instance(opts);
    let mut adapters = inst.enumerate_adapters(inst_backends(opts)).await;
    let filter = match &opts.backends {
        Some(b) => format!(" for backends {b:?}"),
        None => match std::env::var("WGPU_BACKEND") {
            Ok(b) => format!(" for WGPU_BACKEND={b}"),
            Err(_) => String::new(),
        },
    };
    if adapters.is_empty() {
        return Err(Error::NoAdapter(filter));
    }
    if let Some(index) = opts.adapter_index {
        let count = adapters.len();
        if index >= count {
            return Err(Error::AdapterIndex { index, count });
        }
        return Ok(adapters.swap_remove(index));
    }
    let name = opts
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok());
    if let Some(name) = name {
        let needle = name.to_lowercase();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&needle))
            .ok_or_else(|| Error::NoAdapter(format!(" whose name contains `{name}`{filter}")));
    }
    adapters.sort_by_key(|a| std::cmp::Reverse(adapter_rank(&a.get_info())));
    Ok(adapters.swap_remove(0))
}

#[cfg(target_arch = "wasm32")]
async fn choose_adapter(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let inst = instance(opts);
    inst.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    })
    .await
    .map_err(|_| {
        Error::NoAdapter(
            " (WebGPU is unavailable in this browser: use a browser with WebGPU enabled, e.g. \
             Chromium with --enable-unsafe-webgpu where the GPU is blocklisted)"
                .into(),
        )
    })
}

/// Whether the adapter multiplies 16x16 f16 tiles into f32 accumulators on cooperative matrices.
fn has_coop_f16_16x16(adapter: &wgpu::Adapter) -> bool {
    if !adapter
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        return false;
    }
    use wgpu::CooperativeScalarType as T;
    adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16) && p.ab_type == T::F16 && p.cr_type == T::F32
    })
}

/// Errors the device reported outside an error scope, collected instead of panicking.
type ErrorSink = Arc<Mutex<Vec<String>>>;

/// An open GPU device with everything the kernels need.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Cooperative matrices with 16x16x16 f16 -> f32 tiles are enabled on this device.
    pub coop_f16: bool,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// The driver's pipeline cache and the file it persists to, where enabled and supported.
    pipeline_cache: Option<(wgpu::PipelineCache, std::path::PathBuf)>,
    /// GPU objects created through this struct (buffers, bind groups, pipelines, query sets): the
    /// engine's tests hold it constant across decode steps.
    created: AtomicU64,
    /// Bytes of the buffers created through this struct.
    allocated: AtomicU64,
    errors: ErrorSink,
    lost: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Opens the adapter the options choose, with the optional features we use where present.
    pub async fn new(opts: &GpuOptions) -> Result<Self> {
        let adapter = choose_adapter(opts).await?;
        let info = adapter.get_info();
        let mut wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::SUBGROUP_BARRIER
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::PIPELINE_CACHE;
        if !opts.disable_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        // Cooperative matrices are experimental in wgpu (native only); the kernels that use them are
        // checked against the float64 reference by `diffattn verify` on every adapter that has them.
        let coop_f16 = !opts.disable_coop && !opts.disable_f16 && has_coop_f16_16x16(&adapter);
        if coop_f16 {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let features = adapter.features() & wanted;
        let coop_f16 =
            coop_f16 && features.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        let mut limits = adapter.limits();
        if let Some(max) = opts.max_storage_binding {
            let l = &mut limits.max_storage_buffer_binding_size;
            *l = (*l).min(max);
        }
        let experimental_features = if coop_f16 {
            // SAFETY: wgpu asks callers to opt in to experimental features; the only one we request
            // is cooperative matrices, used by shaders that respect their uniformity rules.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("diffattn"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::DeviceRequest {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        #[cfg(not(target_arch = "wasm32"))]
        let pipeline_cache = open_pipeline_cache(&device, &info, features, opts);
        #[cfg(target_arch = "wasm32")]
        let pipeline_cache = None;
        let errors: ErrorSink = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lost_sink.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
        });
        Ok(Self {
            device,
            queue,
            info,
            features,
            limits,
            coop_f16,
            pipelines: Mutex::default(),
            pipeline_cache,
            created: AtomicU64::new(0),
            allocated: AtomicU64::new(0),
            errors,
            lost,
        })
    }

    /// Blocking convenience for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new(opts))
    }

    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// `subgroupBarrier()` in shaders (native Vulkan and Metal).
    pub fn has_subgroup_barrier(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP_BARRIER)
    }

    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Subgroups of one fixed size of at least `min` invocations, laid out linearly (what the
    /// subgroup-shuffle reductions of the fast kernels assume).
    pub fn fixed_subgroup_size(&self) -> Option<u32> {
        let (lo, hi) = (self.info.subgroup_min_size, self.info.subgroup_max_size);
        (self.has_subgroups() && lo == hi && lo > 0).then_some(lo)
    }

    /// A one-line description: name, backend, type.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// The compute pipeline for a specialised shader, compiled once per specialisation. Its layout
    /// comes from the shader's binding declarations; a uniform at binding 0 takes a dynamic offset.
    pub fn pipeline(&self, spec: &ShaderSpec) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = spec.key();
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let source = spec.source()?;
        let kinds = shader::bindings(spec.name, &source)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(spec.name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| layout_entry(i as u32, *kind))
            .collect();
        let bind_layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(spec.name),
                entries: &entries,
            });
        let layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.name),
                bind_group_layouts: &[Some(&bind_layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.name),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: Default::default(),
                cache: self.pipeline_cache.as_ref().map(|(c, _)| c),
            });
        if let Some(e) = pollster_free_block(scope.pop()) {
            return Err(Error::Shader {
                shader: key,
                message: e.to_string(),
            });
        }
        self.count_created();
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Writes the driver's pipeline cache to its file (see [`GpuOptions::pipeline_cache_dir`]);
    /// returns the path written, or `None` where no cache is kept. Written to a temporary file and
    /// renamed, so a crash never leaves a torn cache.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_pipeline_cache(&self) -> std::io::Result<Option<std::path::PathBuf>> {
        let Some((cache, path)) = &self.pipeline_cache else {
            return Ok(None);
        };
        let Some(data) = cache.get_data() else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, path)?;
        Ok(Some(path.clone()))
    }

    /// GPU objects created so far through this struct (buffers, bind groups, pipelines, query
    /// sets). A decode step after warm-up creates none; the engine tests check that with this.
    pub fn resources_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Bytes of all buffers created so far through this struct (weights, cache, activations,
    /// parameters, read-back), whether or not they were dropped since.
    pub fn bytes_allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    fn count_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    fn count_buffer(&self, bytes: u64) {
        self.count_created();
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Checks that a buffer of `bytes` fits the adapter's binding and buffer limits.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let checks = [
            (
                "max_storage_buffer_binding_size",
                self.limits.max_storage_buffer_binding_size,
            ),
            ("max_buffer_size", self.limits.max_buffer_size),
        ];
        for (limit, available) in checks {
            if bytes > available {
                return Err(Error::Limit {
                    what: what.to_string(),
                    limit,
                    needed: bytes,
                    available,
                    over: bytes - available,
                });
            }
        }
        Ok(())
    }

    /// Checks that a dispatch fits `max_compute_workgroups_per_dimension`.
    pub fn check_dispatch(&self, what: &str, groups: [u32; 3]) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if let Some(&g) = groups.iter().find(|&&g| g > max) {
            return Err(Error::Unsupported(format!(
                "{what} needs {g} workgroups in one dimension; the adapter allows {max}"
            )));
        }
        Ok(())
    }

    /// A storage buffer of `bytes` (rounded up to 16), usable as copy source and destination.
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.check_binding(label, bytes)?;
        self.count_buffer(bytes.max(16).next_multiple_of(16));
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(16),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer initialised with `data` (padded to 16 bytes).
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        self.check_binding(label, data.len() as u64)?;
        let mut padded;
        let contents = if data.len().is_multiple_of(16) && !data.is_empty() {
            data
        } else {
            padded = data.to_vec();
            padded.resize(data.len().max(16).next_multiple_of(16), 0);
            &padded[..]
        };
        self.count_buffer(contents.len() as u64);
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            }))
    }

    /// A uniform buffer holding `value`.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.count_buffer(std::mem::size_of::<T>() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A buffer with the given usage (`bytes` rounded up to 16), for the uses the other helpers do
    /// not cover (query resolution).
    pub fn buffer(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.count_buffer(bytes.max(16).next_multiple_of(16));
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).next_multiple_of(16),
            usage,
            mapped_at_creation: false,
        })
    }

    /// A buffer the host maps to read results back (copy destination, `bytes` rounded up to 16).
    pub fn readback_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.buffer(
            label,
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// A timestamp query set of `count` entries, where the device has timestamps.
    pub fn timestamp_queries(&self, label: &str, count: u32) -> Option<wgpu::QuerySet> {
        if !self.has_timestamps() {
            return None;
        }
        self.count_created();
        Some(self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count,
        }))
    }

    /// A bind group for group 0 of `pipeline`, binding the buffers at 0, 1, 2, ... in order. A
    /// uniform buffer at binding 0 is bound for one arena slot ([`UNIFORM_SLOT`] bytes, or the
    /// whole buffer if smaller): its offset is given when the group is set.
    pub fn bind(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let dynamic = i == 0 && b.usage().contains(wgpu::BufferUsages::UNIFORM);
                let resource = if dynamic {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset: 0,
                        size: wgpu::BufferSize::new(b.size().min(UNIFORM_SLOT)),
                    })
                } else {
                    b.as_entire_binding()
                };
                wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource,
                }
            })
            .collect();
        self.count_created();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Fills a buffer with NaN, so that any element a kernel fails to write is caught by a check.
    pub fn poison(&self, buffer: &wgpu::Buffer) {
        let words = (buffer.size() / 4) as usize;
        let nan: Vec<f32> = vec![f32::NAN; words];
        self.queue
            .write_buffer(buffer, 0, bytemuck::cast_slice(&nan));
    }

    /// [`Error::DeviceLost`] if the device was lost (destroyed, reset or removed), else `None`.
    pub fn lost_error(&self) -> Option<Error> {
        self.lost.lock().unwrap().clone().map(Error::DeviceLost)
    }

    /// Returns (and clears) errors the device reported since the last call, or a lost device.
    pub fn take_error(&self, context: &str) -> Result<()> {
        if let Some(reason) = self.lost.lock().unwrap().clone() {
            return Err(Error::DeviceLost(reason));
        }
        let mut errors = self.errors.lock().unwrap();
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        if message.to_lowercase().contains("out of memory") {
            return Err(Error::OutOfMemory(context.to_string()));
        }
        Err(Error::Validation {
            context: context.to_string(),
            message,
        })
    }

    /// Reads `len` f32 values from the start of `buffer`.
    pub async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = read_buffer(self, buffer, 0, (len * 4) as u64).await?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Blocks (natively) until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        Ok(())
    }

    /// Blocks (natively) until one submission is done, leaving later ones running.
    pub fn wait_for(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        // The browser has no blocking wait: a map's callback is the wait there.
        #[cfg(target_arch = "wasm32")]
        let _ = submission;
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// The driver's pipeline cache, seeded from its file when one exists (a stale or foreign file is
/// ignored by the driver, which then starts empty).
fn open_pipeline_cache(
    device: &wgpu::Device,
    info: &wgpu::AdapterInfo,
    features: wgpu::Features,
    opts: &GpuOptions,
) -> Option<(wgpu::PipelineCache, std::path::PathBuf)> {
    let dir = opts.pipeline_cache_dir.as_ref()?;
    if !features.contains(wgpu::Features::PIPELINE_CACHE) {
        return None;
    }
    let path = dir.join(format!("{}.bin", wgpu::util::pipeline_cache_key(info)?));
    let data = std::fs::read(&path).ok();
    // SAFETY: the data is what `PipelineCache::get_data` wrote for an adapter with this key; wgpu
    // and the driver validate its header (vendor, device, driver version) and fall back to an
    // empty cache when it does not match.
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("diffattn pipelines"),
            data: data.as_deref(),
            fallback: true,
        })
    };
    Some((cache, path))
}

/// Bytes of one uniform-arena slot as a binding sees it: every parameter block fits.
pub const UNIFORM_SLOT: u64 = 256;

fn layout_entry(binding: u32, kind: BindingKind) -> wgpu::BindGroupLayoutEntry {
    let ty = match kind {
        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
        BindingKind::ReadOnly => wgpu::BufferBindingType::Storage { read_only: true },
        BindingKind::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: binding == 0 && kind == BindingKind::Uniform,
            min_binding_size: None,
        },
        count: None,
    }
}

/// One uniform buffer holding many parameter blocks, one per slot, each bound at binding 0 with a
/// dynamic offset: the plan's bind groups are made once, and a step only writes the slots it uses
/// (one `write_buffer` for all of them) and passes their offsets.
pub struct UniformArena {
    buffer: wgpu::Buffer,
    stride: u64,
    slots: u32,
    host: Vec<u8>,
}

impl UniformArena {
    /// An arena of `slots` slots, each aligned as the adapter requires.
    pub fn new(gpu: &Gpu, label: &str, slots: u32) -> Self {
        let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
        let stride = UNIFORM_SLOT.next_multiple_of(align.max(1));
        let bytes = stride * slots.max(1) as u64;
        gpu.count_buffer(bytes);
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self {
            buffer,
            stride,
            slots: slots.max(1),
            host: vec![0; bytes as usize],
        }
    }

    /// The buffer to bind at binding 0.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Slots in the arena.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The dynamic offset of a slot.
    pub fn offset(&self, slot: u32) -> u32 {
        (slot as u64 * self.stride) as u32
    }

    /// Sets a slot's contents on the host side; [`UniformArena::upload`] sends them.
    pub fn set<T: bytemuck::Pod>(&mut self, slot: u32, value: &T) {
        assert!(
            slot < self.slots,
            "uniform arena slot {slot} of {}",
            self.slots
        );
        let bytes = bytemuck::bytes_of(value);
        assert!(
            bytes.len() as u64 <= UNIFORM_SLOT,
            "a parameter block over one slot"
        );
        let at = self.offset(slot) as usize;
        self.host[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes slots `0..used` to the GPU in one queue write (ordered before the next submit).
    pub fn upload(&self, gpu: &Gpu, used: u32) {
        let end = (self.stride * used.clamp(1, self.slots) as u64) as usize;
        gpu.queue.write_buffer(&self.buffer, 0, &self.host[..end]);
    }
}

/// Error-scope futures resolve as soon as the device has processed the scope; natively that is at
/// `pop` time, and in the browser the result arrives asynchronously, so there we do not wait.
fn pollster_free_block<F: std::future::Future<Output = Option<wgpu::Error>>>(
    fut: F,
) -> Option<wgpu::Error> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(fut)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(fut);
        None
    }
}
