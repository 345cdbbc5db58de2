//! The SSD tier: the bucket file format and the bucket protocol (both `no_std`), and
//! with `std` the write-behind queue.

pub mod format;
pub mod protocol;
#[cfg(feature = "std")]
pub mod queue;

#[cfg(test)]
mod tests;
