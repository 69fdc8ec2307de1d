//! Lockstep host agent, a library first.
//!
//! A streaming engine implements [`Engine`]; [`run`] wraps it in the agent:
//! the coordinator session (`lockstep.v1.HostSession`), the step journal,
//! the exactly-once file sink, checkpoints, and the sans-IO transaction
//! core ([`core::HostCore`]) that decides what happens on every command.
//! [`run_reference`] runs the bundled reference engine (keyed aggregation
//! over a seeded generator and a push-ingest API), which is what the
//! `host-agent` daemon and the coordinator's `dev` mode use.
//!
//! Modules: `engine` (the trait and its types), `core` (state machine),
//! `runtime` (async shell), `convert` (protobuf <-> domain), `sink` (the
//! file), `sink_writer` (its ordered background writer), `reference`,
//! `fsutil` (durable small files), `metrics` (what the agent reports to
//! the process's metrics recorder), `drain` (a gRPC server's stop with a
//! bounded drain, for both daemons), `signals` (the daemons' stop request,
//! listened for from their first moment), `tls` (both daemons' mutual TLS
//! files and flags), `health` (their plaintext health-only listener, for
//! probes that speak no TLS).

pub mod convert;
pub mod core;
pub mod drain;
pub mod engine;
pub mod fsutil;
pub mod health;
pub mod metrics;
pub mod reference;
pub mod replay_reader;
pub mod runtime;
pub mod signals;
pub mod sink;
pub mod sink_writer;
pub mod tls;

pub use engine::{
    output_digest, EndpointInput, Engine, EngineError, GeneratorRef, OutputRow, Payload, StepContext, StepInput,
};
pub use reference::{ReferenceConfig, ReferenceEngine};
pub use runtime::{host_id_problem, replay_alone, run, AgentError, HostConfig, ReplayAloneReport};

use std::future::Future;

/// Runs a host agent with the reference engine and its Ingest service until
/// `shutdown` resolves. `reference.host_id` is taken from `config`.
pub async fn run_reference(
    config: HostConfig,
    reference: ReferenceConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let engine = ReferenceEngine::new(ReferenceConfig { host_id: config.host_id.clone(), ..reference });
    let services = tonic::service::Routes::new(engine.ingest_service());
    run(config, engine, services, shutdown).await
}
