//! Serving errors, and the one table that maps them to HTTP and gRPC codes.

use cellar_store::StoreError;

/// Whose fault an error is, which decides its HTTP and gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for something impossible.
    InvalidArgument,
    /// The request names a group, feature or service that does not exist.
    NotFound,
    /// The request or a record in it is over a size limit.
    TooLarge,
    /// The request carries no credentials, or ones that do not pass.
    Unauthenticated,
    /// The caller may not do this to that resource.
    PermissionDenied,
    /// The request took longer than its deadline.
    DeadlineExceeded,
    /// A backend is failing; retrying may help.
    Unavailable,
    /// A defect or corrupt data on our side.
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The gRPC status code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::TooLarge => tonic::Code::OutOfRange,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }
}

/// Why a serving request failed. Every message names the field or thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("unknown feature group `{name}`; known groups: {known}")]
    UnknownGroup { name: String, known: String },
    #[error("feature group `{group}` has no feature `{feature}`; its features: {known}")]
    UnknownFeature {
        group: String,
        feature: String,
        known: String,
    },
    #[error("unknown feature service `{0}`")]
    UnknownService(String),
    #[error("too many entities in one request: {count}, the limit is {limit}")]
    TooManyEntities { count: usize, limit: usize },
    #[error("{0}")]
    TooLarge(String),
    #[error("request did not finish within its deadline of {0} ms")]
    DeadlineExceeded(u64),
    #[error(transparent)]
    Denied(#[from] cellar_auth::Denied),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A defect on our side, such as a response that cannot be encoded.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    /// The kind that decides this error's codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServeError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ServeError::UnknownGroup { .. }
            | ServeError::UnknownFeature { .. }
            | ServeError::UnknownService(_) => ErrorKind::NotFound,
            ServeError::TooManyEntities { .. } | ServeError::TooLarge(_) => ErrorKind::TooLarge,
            ServeError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ServeError::Denied(_) => ErrorKind::PermissionDenied,
            ServeError::Store(StoreError::RecordTooLarge { .. }) => ErrorKind::TooLarge,
            ServeError::Store(StoreError::InvalidInput { .. }) => ErrorKind::InvalidArgument,
            ServeError::Store(StoreError::Backend(_)) => ErrorKind::Unavailable,
            ServeError::Store(_) | ServeError::Internal(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> ServeError {
        ServeError::InvalidArgument(msg.into())
    }
}

impl From<ServeError> for tonic::Status {
    fn from(e: ServeError) -> tonic::Status {
        tonic::Status::new(e.kind().grpc_code(), e.to_string())
    }
}
