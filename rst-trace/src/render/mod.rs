//! Every format rst-trace prints: events as text or JSON, the summary, the metrics page, and
//! the fast formatting helpers they share.

mod event;
mod fast;
pub mod metrics;
mod out;
mod summary;

pub use event::{lost, render_into};
pub use fast::{Clock, Format};
pub use out::Out;
pub use summary::Summary;
