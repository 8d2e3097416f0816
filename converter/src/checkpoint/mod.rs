//! A checkpoint's files: finding them ([`layout`], with a module per kind of folder; what it
//! yields and the checks they share in `found`) and listing the weights each holds
//! (`weights`). Nothing here knows a plan or an optimizer's partitions: `crate::zero` and
//! [`crate::plan`](mod@crate::plan) build on this, and `crate::open` on all three.

mod dcp_folder;
pub(crate) mod found;
pub(crate) mod hugging_face;
pub mod layout;
mod rank_grid;
pub(crate) mod weights;

pub use found::{Layout, ShardPath};
pub use weights::Rank;
