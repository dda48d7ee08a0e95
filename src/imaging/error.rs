//! One error type for the imaging module, so callers can match on what went wrong and show the
//! message to a user as it is: every message names the file (or the in-memory source) and the
//! problem.

use std::io;

/// Shorthand used throughout the imaging module.
pub type Result<T, E = ImagingError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, preparing, measuring or saving images.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagingError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("{path} is not a regular file")]
    NotAFile { path: String },

    #[error("{path} is empty (0 bytes), not an image")]
    EmptyFile { path: String },

    #[error("{path} is {bytes} bytes, above the limit of {limit} bytes; it was not read")]
    FileTooLarge {
        path: String,
        bytes: u64,
        limit: u64,
    },

    #[error(
        "{path} is not a PNG, JPEG or WebP image (its first bytes match no known image format)"
    )]
    NotAnImage { path: String },

    #[error("{path} is a {format} image; only PNG, JPEG and WebP are supported")]
    UnsupportedFormat { path: String, format: String },

    #[error(
        "{path} is {width}x{height} = {pixels} pixels, above the limit of {limit} pixels; \
         it was not decoded"
    )]
    TooManyPixels {
        path: String,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },

    #[error("{path} has a zero-sized image ({width}x{height})")]
    ZeroSized {
        path: String,
        width: u32,
        height: u32,
    },

    #[error("{path} could not be decoded (is it truncated or corrupt?): {source}")]
    Decode {
        path: String,
        #[source]
        source: image::ImageError,
    },

    #[error("the downsampling factor must be at least 1, got {factor}")]
    InvalidFactor { factor: usize },

    #[error("the image size {size} must be a positive multiple of the model's downsampling factor {factor}")]
    SizeNotMultiple { size: u32, factor: usize },

    #[error(
        "the image is {width}x{height}, smaller than the model's downsampling factor {factor} \
         on its short side; it cannot be encoded"
    )]
    ImageTooSmall {
        width: u32,
        height: u32,
        factor: usize,
    },

    #[error("{what}: expected {expected_w}x{expected_h}, found {found_w}x{found_h}")]
    SizeMismatch {
        what: &'static str,
        expected_w: u32,
        expected_h: u32,
        found_w: u32,
        found_h: u32,
    },

    #[error("{what}: no images given")]
    EmptyInput { what: &'static str },

    #[error("{what}: expected {expected} values, found {found}")]
    BufferLength {
        what: &'static str,
        expected: usize,
        found: usize,
    },

    #[error("PNG text key {key:?} is invalid: {reason}")]
    InvalidTextKey { key: String, reason: &'static str },

    #[error("cannot encode {path} as PNG: {message}")]
    PngEncode { path: String, message: String },

    #[error("cannot read PNG text from {path}: {message}")]
    PngRead { path: String, message: String },

    #[error("cannot parse generation parameters: {0}")]
    Parameters(String),
}
