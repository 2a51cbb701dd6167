//! Every format rst-trace prints: events as text or JSON, the summary, the metrics page, and
//! the fast formatting helpers they share.

mod app;
mod collectors;
mod event;
mod fast;
mod fields;
pub mod metrics;
mod out;
mod sink;
mod stacks;
mod summary;

pub use app::human_ns;
pub use fast::{Clock, Format, visible};
pub use out::Out;
pub use sink::Sink;
pub use summary::Summary;
