//! The error type every public function of the library returns.

use thiserror::Error;

/// Everything that can go wrong at the library boundary. Each variant renders as one line that says
/// what failed and, where there is one, what to do about it.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{0}: install a GPU driver with Vulkan, Metal or DX12 support, or on Linux \
         `apt-get install mesa-vulkan-drivers` for the software adapter (lavapipe)"
    )]
    NoAdapter(String),

    #[error(
        "adapter index {index} is out of range: {count} adapter(s) found (see `diffattn adapters`)"
    )]
    AdapterIndex { index: usize, count: usize },

    #[error("could not create a GPU device on {adapter}: {reason}")]
    DeviceRequest { adapter: String, reason: String },

    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    #[error("GPU validation error in {context}: {message}")]
    Validation { context: String, message: String },

    #[error(
        "{what} holds a non-finite value ({value} at index {index}): the inputs or weights overflow f32"
    )]
    NonFinite {
        what: String,
        index: usize,
        value: f32,
    },

    #[error("GPU out of memory in {0}")]
    OutOfMemory(String),

    #[error("buffer read-back failed: {0}")]
    Readback(String),

    #[error("tensor `{tensor}` has the wrong shape: expected {expected}, got {got}")]
    Shape {
        tensor: String,
        expected: String,
        got: String,
    },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error(
        "{what} needs {needed} bytes but the adapter's {limit} is {available} bytes ({over} bytes over)"
    )]
    Limit {
        what: String,
        limit: &'static str,
        needed: u64,
        available: u64,
        over: u64,
    },

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("shader `{shader}`: {message}")]
    Shader { shader: String, message: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {message}")]
    Format { path: String, message: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("model: {0}")]
    Model(String),

    #[error("generation was cancelled")]
    Cancelled,

    #[error("{what} not found: {path}")]
    NotFound { what: String, path: String },

    #[error("missing tensor `{name}` (looked in {files})")]
    MissingTensor { name: String, files: String },

    #[error("config.json contradicts the weights: {0}")]
    ConfigMismatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error for the first non-finite value of `values`, if there is one.
    pub fn check_finite(what: &str, values: &[f32]) -> Result<()> {
        match values.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(index) => Err(Error::NonFinite {
                what: what.to_string(),
                index,
                value: values[index],
            }),
        }
    }

    pub(crate) fn shape(tensor: &str, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape {
            tensor: tensor.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    pub(crate) fn config(msg: impl ToString) -> Self {
        Error::Config(msg.to_string())
    }
}
