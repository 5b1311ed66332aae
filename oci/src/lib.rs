//! sm-oci turns an image reference into something a microVM can boot: it resolves docker-style
//! references, pulls images over the distribution v2 API (or reads OCI layouts, OCI archives
//! and `docker save` archives), verifies every blob's digest, keeps them in a content-addressed
//! cache shared safely by concurrent pulls, and builds a read-only EROFS root image from the
//! layers, cached by manifest digest, together with the image's parsed run configuration.
//!
//! [`reference`] parses references, [`digest`] checks content, [`cache`] owns the on-disk
//! store, [`blob`] writes one blob safely, [`refs`] is the index of pulled images and its
//! garbage collection, [`spec`] holds the OCI/Docker JSON documents, [`platform`] picks
//! an entry from an image index, [`auth`] reads docker credentials, [`registry`] pulls from a
//! registry, [`local`] imports local layouts and archives, [`pull`] ties sources to the cache,
//! [`unpack`] applies layers safely beneath a directory and [`rootfs`] builds the root image.

#![warn(missing_docs)]

pub mod auth;
pub mod blob;
pub mod cache;
pub mod digest;
pub mod local;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod refs;
pub mod registry;
pub mod rootfs;
pub mod spec;
pub mod unpack;

pub use cache::Cache;
pub use digest::Digest;
pub use platform::Platform;
pub use pull::{ensure, pull, PullError, PullOptions, PullPolicy};
pub use reference::{ImageRef, RegistryRef};
pub use refs::ImageRecord;
pub use rootfs::{image_config, rootfs_image, RootfsError};
pub use spec::RunConfig;
