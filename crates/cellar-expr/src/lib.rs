//! Cellar's expression language: the SQL scalar expressions of on-demand features (computed
//! per request) and of write-time features (computed per event or row), with DataFusion's
//! functions and a few of Cellar's own ([`functions`]).
//!
//! An expression is checked and compiled once, when its spec is applied, against a
//! [`Scope`] of typed inputs (request fields, entity keys, other groups' features), into a
//! DataFusion physical expression. It is then evaluated over a record batch holding every
//! entity of a request (or every row of a batch) at once, in one vectorised pass; a batch of
//! a few rows, where that pass is mostly fixed cost, is walked a row at a time over the same
//! compiled expression when every node of it can be (`row`). The batch path runs the same
//! text through DataFusion SQL in a [`session`] with the same functions, so both paths give
//! the same values.
//!
//! Layout:
//! - `expression`: [`Scope`], [`Expression`] (compile, evaluate), `now()` as the evaluation
//!   time;
//! - `functions`: `haversine_km`, `cosine_similarity`;
//! - `row`: the same compiled expressions walked a row at a time, for small requests;
//! - `arrow`: feature values as Arrow columns;
//! - `cells`: feature values as the cells a walked expression reads, without Arrow columns;
//! - `column`: Arrow columns read back as feature values (shared with batch ingestion);
//! - `on_demand`: [`OnDemandExpressions`], an on-demand group's features compiled against a
//!   repo, with where each input comes from;
//! - `write`: [`WriteExpressions`], the stored features an ingestion computes as it writes.

pub mod arrow;
pub mod cells;
pub mod column;
mod expression;
pub mod functions;
pub mod on_demand;
mod row;
mod write;

pub use cellar_spec::ExpressionInput as Input;
pub use expression::{session, Checker, ExprError, Expression, Outcome, RowBatch, Scope, NOW};
pub use on_demand::{InputSource, OnDemandExpressions};
pub use write::{ComputedRow, WriteExpressions};
