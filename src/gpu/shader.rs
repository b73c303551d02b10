//! WGSL sources and their specialisation.
//!
//! Every shader in `shaders/` is a complete, valid WGSL module on its own, or together with the
//! libraries it lists in [`INCLUDES`] (helper functions several shaders share, appended to the
//! shader's source: WGSL has no imports, and declarations may come in any order). Its tunables are plain
//! module-scope constants (`const HEAD_DIM: u32 = 64u;`) with sensible defaults; the host specialises a
//! shader by giving new values for some of those constants. Nothing else in the source is rewritten, so
//! what runs is what a reader sees in the file. Private and workgroup array sizes must be
//! const-expressions in WGSL, which is why these are constants and not pipeline `override`s.

use crate::error::{Error, Result};
use std::fmt;

/// The shader files compiled into the crate, by name.
pub const SOURCES: &[(&str, &str)] = &[
    ("flash_attn", include_str!("../../shaders/flash_attn.wgsl")),
    ("flash_coop", include_str!("../../shaders/flash_coop.wgsl")),
    (
        "decode_split",
        include_str!("../../shaders/decode_split.wgsl"),
    ),
    (
        "decode_serial",
        include_str!("../../shaders/decode_serial.wgsl"),
    ),
    (
        "decode_coop",
        include_str!("../../shaders/decode_coop.wgsl"),
    ),
    (
        "decode_subgroup",
        include_str!("../../shaders/decode_subgroup.wgsl"),
    ),
    (
        "combine_serial",
        include_str!("../../shaders/combine_serial.wgsl"),
    ),
    (
        "diff_combine",
        include_str!("../../shaders/diff_combine.wgsl"),
    ),
    ("embed", include_str!("../../shaders/embed.wgsl")),
    ("bandwidth", include_str!("../../shaders/bandwidth.wgsl")),
    ("rmsnorm", include_str!("../../shaders/rmsnorm.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("gemm_coop", include_str!("../../shaders/gemm_coop.wgsl")),
    (
        "gemm_ceiling",
        include_str!("../../shaders/gemm_ceiling.wgsl"),
    ),
    (
        "rope_append",
        include_str!("../../shaders/rope_append.wgsl"),
    ),
    ("swiglu", include_str!("../../shaders/swiglu.wgsl")),
    ("sample", include_str!("../../shaders/sample.wgsl")),
    (
        "sample_dist",
        include_str!("../../shaders/sample_dist.wgsl"),
    ),
    (
        "top_logprobs",
        include_str!("../../shaders/top_logprobs.wgsl"),
    ),
];

/// Libraries: WGSL files of functions and constants only (no bindings, no entry points), which a
/// shader composes with by listing them in [`INCLUDES`]. A library reads what it needs through
/// functions its includer defines (dequant.wgsl: `weight_word`).
pub const LIBRARIES: &[(&str, &str)] = &[
    ("dequant", include_str!("../../shaders/dequant.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
];

/// The libraries each shader is composed with, appended in this order.
pub const INCLUDES: &[(&str, &[&str])] = &[
    ("matmul", &["dequant"]),
    ("embed", &["dequant"]),
    ("sample_dist", &["reduce"]),
    ("top_logprobs", &["reduce"]),
];

/// A shader's source composed with its libraries: the module that is compiled (before
/// specialisation).
pub fn composed(name: &str) -> Result<String> {
    let missing = |what: &str| Error::Shader {
        shader: name.to_string(),
        message: format!("no such {what}"),
    };
    let base = SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
        .ok_or_else(|| missing("shader"))?;
    let mut out = base.to_string();
    let libs = INCLUDES.iter().find(|(n, _)| *n == name);
    for lib in libs.map_or(&[][..], |(_, l)| l) {
        let (_, src) = LIBRARIES
            .iter()
            .find(|(n, _)| n == lib)
            .ok_or_else(|| missing(&format!("library `{lib}`")))?;
        out.push_str("\n\n// ---- ");
        out.push_str(lib);
        out.push_str(".wgsl ----\n");
        out.push_str(src);
    }
    Ok(out)
}

/// A value for one specialisation constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Const {
    U32(u32),
    F32(f32),
    Bool(bool),
}

impl Const {
    fn wgsl_type(&self) -> &'static str {
        match self {
            Const::U32(_) => "u32",
            Const::F32(_) => "f32",
            Const::Bool(_) => "bool",
        }
    }
}

impl fmt::Display for Const {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Const::U32(v) => write!(f, "{v}u"),
            Const::F32(v) => write!(f, "{v:?}"),
            Const::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// A shader plus the constant values it is specialised with; also the pipeline cache key.
#[derive(Clone, Debug, PartialEq)]
pub struct ShaderSpec {
    pub name: &'static str,
    pub entry: &'static str,
    pub consts: Vec<(&'static str, Const)>,
}

impl ShaderSpec {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            entry: "main",
            consts: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: Const) -> Self {
        self.consts.push((name, value));
        self
    }

    pub fn entry(mut self, entry: &'static str) -> Self {
        self.entry = entry;
        self
    }

    /// A stable string that identifies this specialisation.
    pub fn key(&self) -> String {
        let mut key = format!("{}::{}", self.name, self.entry);
        for (name, value) in &self.consts {
            key.push_str(&format!(";{name}={value}"));
        }
        key
    }

    /// The specialised WGSL source, composed with the shader's libraries.
    pub fn source(&self) -> Result<String> {
        specialise(self.name, &composed(self.name)?, &self.consts)
    }
}

/// Replaces the values of the named module-scope constants in `source`.
///
/// Each constant must be declared exactly once, on its own line, as `const NAME: TYPE = VALUE;`, with
/// the type the host passes. A constant the shader does not declare is an error, so a renamed constant
/// cannot silently keep its default.
pub fn specialise(shader: &str, source: &str, consts: &[(&str, Const)]) -> Result<String> {
    let mut lines: Vec<String> = source.lines().map(str::to_string).collect();
    for (name, value) in consts {
        let prefix = format!("const {name}:");
        let mut found = 0;
        for line in lines.iter_mut() {
            if !line.trim_start().starts_with(&prefix) {
                continue;
            }
            found += 1;
            let declared = line
                .split(':')
                .nth(1)
                .and_then(|rest| rest.split('=').next())
                .map(str::trim)
                .unwrap_or("");
            if declared != value.wgsl_type() {
                return Err(Error::Shader {
                    shader: shader.to_string(),
                    message: format!(
                        "constant {name} is declared as {declared}, specialised as {}",
                        value.wgsl_type()
                    ),
                });
            }
            *line = format!("const {name}: {declared} = {value};");
        }
        if found != 1 {
            return Err(Error::Shader {
                shader: shader.to_string(),
                message: format!("constant {name} is declared {found} times (expected once)"),
            });
        }
    }
    Ok(lines.join("\n"))
}

/// How a shader declares one binding of group 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>`. Binding 0, when it is a uniform, is the per-dispatch parameter block and is
    /// bound with a dynamic offset into a uniform arena (see [`crate::gpu::UniformArena`]).
    Uniform,
    /// `var<storage, read>`.
    ReadOnly,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// The group-0 bindings a shader declares, in binding order, read from its
/// `@group(0) @binding(N) var<...>` lines (the form every shader in `shaders/` uses; the shader tests
/// hold this against naga's reflection of each module).
pub fn bindings(shader: &str, source: &str) -> Result<Vec<BindingKind>> {
    let bad = |message: String| Error::Shader {
        shader: shader.to_string(),
        message,
    };
    let mut found: Vec<(u32, BindingKind)> = Vec::new();
    for line in source.lines() {
        let Some(rest) = line.trim_start().strip_prefix("@group(0) @binding(") else {
            continue;
        };
        let (index, decl) = rest
            .split_once(')')
            .ok_or_else(|| bad(format!("unreadable binding line `{line}`")))?;
        let index: u32 = index
            .parse()
            .map_err(|_| bad(format!("unreadable binding index in `{line}`")))?;
        let decl = decl.trim_start();
        let kind = if decl.starts_with("var<uniform>") {
            BindingKind::Uniform
        } else if decl.starts_with("var<storage, read_write>") {
            BindingKind::ReadWrite
        } else if decl.starts_with("var<storage, read>") || decl.starts_with("var<storage>") {
            BindingKind::ReadOnly
        } else {
            return Err(bad(format!("binding kind not understood in `{line}`")));
        };
        found.push((index, kind));
    }
    found.sort_by_key(|b| b.0);
    for (i, (index, _)) in found.iter().enumerate() {
        if *index != i as u32 {
            return Err(bad(format!(
                "group 0 bindings must be numbered 0, 1, 2, ... without gaps (found {index} at {i})"
            )));
        }
    }
    Ok(found.into_iter().map(|b| b.1).collect())
}

/// Defines a `#[repr(C)]` struct that shaders read as a uniform block, with `FIELDS` listing each
/// field's name and WGSL type in order, so that tests can hold every shader's copy of the struct
/// against this one definition.
macro_rules! shader_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl $name {
            /// Field names and WGSL types, in declaration order.
            pub const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($ty))),*];
        }
    };
}
pub(crate) use shader_struct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_declared_constants_only() {
        let src = "const A: u32 = 1u;\nconst B: bool = false;\nfn f() {}";
        let out = specialise("t", src, &[("A", Const::U32(7)), ("B", Const::Bool(true))]).unwrap();
        assert_eq!(out, "const A: u32 = 7u;\nconst B: bool = true;\nfn f() {}");
    }

    #[test]
    fn unknown_or_mistyped_constant_is_an_error() {
        let src = "const A: u32 = 1u;";
        let err = specialise("t", src, &[("C", Const::U32(1))]).unwrap_err();
        assert!(
            err.to_string().contains("constant C is declared 0 times"),
            "{err}"
        );
        let err = specialise("t", src, &[("A", Const::Bool(true))]).unwrap_err();
        assert!(err.to_string().contains("declared as u32"), "{err}");
    }

    #[test]
    fn float_constants_keep_a_decimal_point() {
        let out = specialise("t", "const S: f32 = 0.5;", &[("S", Const::F32(2.0))]).unwrap();
        assert_eq!(out, "const S: f32 = 2.0;");
    }
}
