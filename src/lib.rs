//! triage as a library: the modules the `triage` binary is made of, public so that the
//! fuzz targets and benchmarks can call the pure hot-path pieces (rules compiler, probe,
//! confidence extractors, route, decision) directly.
//!
//! The request path, in order: `server` (listen) → `proxy` (one request's phases) →
//! `route` (match task, choose variant) → `upstream` (pin version, forward; `body` reads
//! the request and the answer whole) → `observe`
//! (`probe` + `confidence`) → `decide` → `review` (publish, `spool` fallback) → respond (`access`: the request's log
//! line).
//! Control plane: `rules` (load, compile, reload), `amqp`, `verdicts`, `metrics`, `admin`,
//! `settings`, `logline` (log lines written off the request path).

pub mod access;
pub mod admin;
pub mod amqp;
pub mod body;
pub mod confidence;
pub mod decide;
pub mod error;
pub mod guard;
pub mod logline;
pub mod metrics;
pub mod observe;
pub mod probe;
pub mod proxy;
pub mod review;
pub mod route;
pub mod rules;
pub mod server;
pub mod settings;
pub mod shadow;
pub mod spool;
pub mod upstream;
pub mod verdicts;
