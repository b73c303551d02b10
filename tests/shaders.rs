//! Every shader in `shaders/` parses, validates with WebGPU's baseline capabilities, and translates
//! to SPIR-V, MSL, HLSL and GLSL: our evidence of Vulkan, Metal, DX12 and GL portability where we
//! have no such machine. Each is checked as written (composed with the libraries it includes, as
//! the host compiles it) and as the host specialises it.

use diffattn::gpu::shader::{Const, INCLUDES, LIBRARIES, composed, specialise};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Native fast paths: cooperative matrices (Vulkan and Metal only), or the subgroup id (not in
/// WebGPU's WGSL); checked for SPIR-V and MSL.
fn is_native_only(source: &str) -> bool {
    source.contains("enable wgpu_cooperative_matrix;") || source.contains("@builtin(subgroup_id)")
}

/// What a native-only shader needs: f16 arithmetic, subgroups, cooperative matrices. Checked for the
/// two backends that offer cooperative matrices, SPIR-V and MSL.
fn translate_native(name: &str, source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let caps = Capabilities::SHADER_FLOAT16
        | Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | Capabilities::SUBGROUP
        | Capabilities::SUBGROUP_BARRIER
        | Capabilities::COOPERATIVE_MATRIX;
    let info = Validator::new(ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation: {}", e.emit_to_string(source)));
    let spv_options = spv::Options {
        lang_version: (1, 6),
        ..Default::default()
    };
    spv::write_vec(&module, &info, &spv_options, None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
    let msl_options = msl::Options {
        lang_version: (2, 3),
        ..Default::default()
    };
    msl::write_string(
        &module,
        &info,
        &msl_options,
        &msl::PipelineOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
}

fn translate_everywhere(name: &str, source: &str) {
    if is_native_only(source) {
        return translate_native(name, source);
    }
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    // unpack2x16float (f16 K/V widened in the shader) is core WGSL; naga files it under
    // SHADER_FLOAT16_IN_FLOAT32, which wgpu grants on every WebGPU-compliant adapter.
    let caps = Capabilities::default() | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: validation: {}", e.emit_to_string(source)));
    assert!(!module.entry_points.is_empty(), "{name}: no entry point");

    spv::write_vec(&module, &info, &spv::Options::default(), None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
    msl::write_string(
        &module,
        &info,
        &msl::Options::default(),
        &msl::PipelineOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
    let mut hlsl_out = String::new();
    hlsl::Writer::new(
        &mut hlsl_out,
        &hlsl::Options::default(),
        &hlsl::PipelineOptions::default(),
    )
    .write(&module, &info, None)
    .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
    for ep in &module.entry_points {
        let mut glsl_out = String::new();
        let options = glsl::Options {
            version: glsl::Version::Embedded {
                version: 310,
                is_webgl: false,
            },
            ..Default::default()
        };
        let pipeline = glsl::PipelineOptions {
            shader_stage: ep.stage,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        glsl::Writer::new(
            &mut glsl_out,
            &module,
            &info,
            &options,
            &pipeline,
            Default::default(),
        )
        .and_then(|mut w| w.write())
        .unwrap_or_else(|e| panic!("{name}: GLSL ({}): {e}", ep.name));
        assert!(
            glsl_out.contains("void main()"),
            "{name}: GLSL output has no main"
        );
    }
}

fn shader_files() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_file_translates_to_every_backend() {
    let files = shader_files();
    assert!(
        files.len() >= 3,
        "expected the shader files, found {}",
        files.len()
    );
    for (file, source) in &files {
        let name = file.trim_end_matches(".wgsl");
        if LIBRARIES.iter().any(|(l, _)| *l == name) {
            // A library alone has no entry point; it is checked in every shader including it,
            // and must declare no bindings of its own.
            assert!(
                !source.contains("@binding("),
                "{file}: a library declares a binding"
            );
            assert!(
                INCLUDES.iter().any(|(_, libs)| libs.contains(&name)),
                "{file}: unused"
            );
            continue;
        }
        let full = composed(name).unwrap();
        assert!(
            full.starts_with(source.as_str()),
            "{file}: not the compiled-in source"
        );
        translate_everywhere(file, &full);
    }
}

#[test]
fn every_compiled_in_shader_is_a_file_in_shaders() {
    let files = shader_files();
    for (name, source) in diffattn::gpu::shader::SOURCES.iter().chain(LIBRARIES) {
        let file = files.iter().find(|(f, _)| f == &format!("{name}.wgsl"));
        assert_eq!(file.map(|(_, s)| s.as_str()), Some(*source), "{name}");
    }
    let known = diffattn::gpu::shader::SOURCES.len() + LIBRARIES.len();
    assert_eq!(files.len(), known, "a shader file is not compiled in");
}

#[test]
fn attention_specialisations_translate() {
    for name in ["flash_attn", "decode_split", "decode_serial"] {
        let (_, src) = diffattn::gpu::shader::SOURCES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        for d in [32u32, 64, 96, 128, 256] {
            for f16 in [false, true] {
                let mut consts = vec![("HEAD_DIM", Const::U32(d)), ("KV_F16", Const::Bool(f16))];
                if name == "flash_attn" {
                    consts.push(("BLOCK_K", Const::U32((16384 / (8 * d)).clamp(4, 64))));
                }
                let s = specialise(name, src, &consts).unwrap();
                translate_everywhere(&format!("{name} d={d} f16={f16}"), &s);
            }
        }
    }
}

#[test]
fn tensor_core_specialisations_translate() {
    let src = |name: &str| {
        diffattn::gpu::shader::SOURCES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    };
    for d in [32u32, 64, 96, 128, 256] {
        for wg in [64u32, 128, 256] {
            for blocks in [1u32, 2] {
                if d > 128 {
                    continue;
                }
                let consts = [
                    ("HEAD_DIM", Const::U32(d)),
                    ("WG", Const::U32(wg)),
                    ("BLOCKS", Const::U32(blocks)),
                ];
                let s = specialise("decode_coop", src("decode_coop"), &consts).unwrap();
                translate_native(&format!("decode_coop d={d} wg={wg} blocks={blocks}"), &s);
            }
        }
        if d <= 128 {
            let consts = [("HEAD_DIM", Const::U32(d)), ("BC", Const::U32(32))];
            let s = specialise("flash_coop", src("flash_coop"), &consts).unwrap();
            translate_native(&format!("flash_coop d={d}"), &s);
        }
    }
    // The bench's tensor-core ceiling, in every tile shape `bench gemm --tiles` takes.
    for (tm, tn) in [(1u32, 1u32), (1, 2), (2, 2), (2, 4), (4, 2), (4, 4)] {
        for sg in [1u32, 4] {
            let consts = [
                ("TM", Const::U32(tm)),
                ("TN", Const::U32(tn)),
                ("SG", Const::U32(sg)),
                ("WG", Const::U32(32 * sg)),
            ];
            let s = specialise("gemm_ceiling", src("gemm_ceiling"), &consts).unwrap();
            translate_native(&format!("gemm_ceiling {tm}x{tn} x{sg}"), &s);
        }
    }
}

#[test]
fn subgroup_decode_specialisations_translate() {
    let (_, src) = diffattn::gpu::shader::SOURCES
        .iter()
        .find(|(n, _)| *n == "decode_subgroup")
        .unwrap();
    for d in [32u32, 64, 128, 256] {
        let lanes = d / 8;
        for rows in [1u32, 2, 4, 8]
            .into_iter()
            .filter(|&r| r >= lanes / 4 && r <= lanes)
        {
            for wg in [64u32, 128, 256] {
                let merge_rows = diffattn::attention::SubgroupShape::new(d, rows, wg).merge_rows;
                for ahead in [0u32, 1, 2] {
                    let consts = [
                        ("HEAD_DIM", Const::U32(d)),
                        ("WG", Const::U32(wg)),
                        ("R", Const::U32(rows)),
                        ("MERGE_ROWS", Const::U32(merge_rows)),
                        ("AHEAD", Const::U32(ahead)),
                    ];
                    let s = specialise("decode_subgroup", src, &consts).unwrap();
                    let name = format!("decode_subgroup d={d} R={rows} wg={wg} ahead={ahead}");
                    translate_native(&name, &s);
                }
            }
        }
    }
}

#[test]
fn model_shader_specialisations_translate() {
    let src = |name: &str| {
        diffattn::gpu::shader::SOURCES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    };
    // Every weight type, the ggml block types (dequantized in the kernels) included.
    for dtype in diffattn::model::WeightDtype::ALL {
        let code = dtype.shader_code();
        for name in ["matmul", "embed"] {
            let full = composed(name).unwrap();
            let s = specialise(name, &full, &[("WEIGHT_DTYPE", Const::U32(code))]).unwrap();
            translate_everywhere(&format!("{name} {dtype:?}"), &s);
        }
    }
    for f16 in [false, true] {
        let s = specialise(
            "rope_append",
            src("rope_append"),
            &[("KV_F16", Const::Bool(f16))],
        )
        .unwrap();
        translate_everywhere(&format!("rope_append f16={f16}"), &s);
    }
}

/// The attention shaders' `Params` blocks are copies of one Rust definition: same field names,
/// types and order, same size.
/// A WGSL struct's fields as (name, scalar type) and its size, or `None` if the module has none
/// of that name: what the host-side `shader_struct!` definitions are held against.
fn wgsl_struct(module: &naga::Module, name: &str) -> Option<(Vec<(String, String)>, usize)> {
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))?;
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{name} is not a struct");
    };
    let fields = members
        .iter()
        .map(|m| {
            let scalar = match module.types[m.ty].inner {
                naga::TypeInner::Scalar(s) => match s.kind {
                    naga::ScalarKind::Uint => "u32",
                    naga::ScalarKind::Float => "f32",
                    naga::ScalarKind::Sint => "i32",
                    _ => "other",
                },
                _ => "non-scalar",
            };
            (m.name.clone().unwrap_or_default(), scalar.to_string())
        })
        .collect();
    Some((fields, *span as usize))
}

/// A `shader_struct!` definition's FIELDS in the same form.
fn rust_fields(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

#[test]
fn attention_params_match_the_rust_definition() {
    let rust = diffattn::attention::Params::FIELDS;
    let mut checked = 0;
    for (name, source) in diffattn::gpu::shader::SOURCES {
        if !source.contains("struct Params") || !source.contains("out_heads") {
            continue;
        }
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let (wgsl, span) =
            wgsl_struct(&module, "Params").unwrap_or_else(|| panic!("{name}: no Params type"));
        let want = rust_fields(rust);
        assert_eq!(wgsl, want, "{name}: Params differs from attention::Params");
        assert_eq!(
            span,
            std::mem::size_of::<diffattn::attention::Params>(),
            "{name}: Params size"
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected the attention shaders, checked {checked}"
    );
}

/// The model shaders' `Step` blocks are copies of `model::plan::Step`, and every shader's binding
/// list as the host reads it (`gpu::shader::bindings`, which makes the pipeline layouts) is what
/// naga sees in the module.
#[test]
fn step_blocks_and_binding_lists_match() {
    use diffattn::gpu::BindingKind;
    let mut steps = 0;
    for (name, _) in diffattn::gpu::shader::SOURCES {
        let source = &composed(name).unwrap();
        let module = naga::front::wgsl::parse_str(source).unwrap();
        if let Some((fields, span)) = wgsl_struct(&module, "Step") {
            let want = rust_fields(diffattn::model::plan::Step::FIELDS);
            assert_eq!(fields, want, "{name}: Step fields");
            assert_eq!(span, std::mem::size_of::<diffattn::model::plan::Step>());
            steps += 1;
        }
        let mut naga_view: Vec<(u32, BindingKind)> = module
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                let b = g.binding.as_ref()?;
                assert_eq!(b.group, 0, "{name}: only group 0 is used");
                let kind = match g.space {
                    naga::AddressSpace::Uniform => BindingKind::Uniform,
                    naga::AddressSpace::Storage { access } => {
                        if access.contains(naga::StorageAccess::STORE) {
                            BindingKind::ReadWrite
                        } else {
                            BindingKind::ReadOnly
                        }
                    }
                    other => panic!("{name}: binding in {other:?}"),
                };
                Some((b.binding, kind))
            })
            .collect();
        naga_view.sort_by_key(|b| b.0);
        let naga_kinds: Vec<BindingKind> = naga_view.into_iter().map(|b| b.1).collect();
        let ours = diffattn::gpu::shader::bindings(name, source).unwrap();
        assert_eq!(ours, naga_kinds, "{name}: binding list");
    }
    assert!(
        steps >= 6,
        "expected the model shaders, found {steps} Step blocks"
    );
}

/// The token-picking kernels' `Params` are `model::plan`'s definitions: names and order, size.
#[test]
fn sampling_params_match_the_rust_definition() {
    use diffattn::model::plan::{GreedyParams, SampleParams, TopParams};
    // (shader, the Rust definition's fields, its size)
    type Case = (&'static str, &'static [(&'static str, &'static str)], usize);
    let cases: [Case; 3] = [
        (
            "sample_dist",
            SampleParams::FIELDS,
            std::mem::size_of::<SampleParams>(),
        ),
        (
            "sample",
            GreedyParams::FIELDS,
            std::mem::size_of::<GreedyParams>(),
        ),
        (
            "top_logprobs",
            TopParams::FIELDS,
            std::mem::size_of::<TopParams>(),
        ),
    ];
    for (name, rust, size) in cases {
        let source = diffattn::gpu::shader::composed(name).unwrap();
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let (fields, span) = wgsl_struct(&module, "Params").unwrap();
        assert_eq!(fields, rust_fields(rust), "{name}");
        assert_eq!(span, size, "{name}");
    }
}

/// The products' `Params` (matmul.wgsl, gemm_coop.wgsl) are `model::plan::MatmulParams`: names
/// and order, size.
#[test]
fn matmul_params_match_the_rust_definition() {
    use diffattn::model::plan::MatmulParams;
    for name in ["matmul", "gemm_coop"] {
        let source = diffattn::gpu::shader::composed(name).unwrap();
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let (fields, span) = wgsl_struct(&module, "Params").unwrap();
        assert_eq!(fields, rust_fields(MatmulParams::FIELDS), "{name}");
        assert_eq!(span, std::mem::size_of::<MatmulParams>(), "{name}");
    }
}
