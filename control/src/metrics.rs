//! The control plane's metrics, served by `GET /metrics` ([`crate::routes::METRICS`]) in the
//! Prometheus text format (version 0.0.4) as the `prometheus-client` crate encodes it.
//!
//! Two kinds of figures:
//!
//! - **events the control plane sees** (allocations, swaps, downscaler actions, routed
//!   invocations, HTTP requests): counters and histograms of [`ControlMetrics`], updated where the
//!   event happens;
//! - **state** (processes by status, and what each process last reported over the control
//!   channel): read from the control plane's records at each scrape ([`ProcessSnapshot`]) and
//!   encoded by a collector, so that a scrape never sees a figure older than the last report.
//!
//! Per-function figures are added up from what each process's `Metrics` frames carry since the
//! previous one ([`FunctionReport`]: latencies in the process's fine histogram, errors by
//! status); `praas process stats` reads them ([`ControlMetrics::function_stats`]), and a scrape
//! sees them as histograms over [`LATENCY_BOUNDS_NS`]. docs/observability.md lists every metric.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use praas_dataplane::control_channel::FunctionReport;
use praas_dataplane::stats::{bucket_bounds, Histogram as LatencyHistogram};
use praas_dataplane::Status;

use crate::model::{Metrics, ProcessStatus};

/// The `Content-Type` of `GET /metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (`le`), in nanoseconds, of the buckets of `praas_function_latency_seconds`. A
/// process counts latencies in finer buckets ([`praas_dataplane::stats`], each at most 1/16 of
/// its floor wide); each fine bucket is counted at its midpoint, so a latency within 1/32 of a
/// bound may land in the bucket beside it.
pub const LATENCY_BOUNDS_NS: [u64; 16] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// Why the metrics could not be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The text encoder failed (it writes to a string, so only a metric that cannot be
    /// represented in the format makes it fail).
    #[error("cannot encode the metrics in the Prometheus text format")]
    Encode(#[from] std::fmt::Error),
}

/// A label set: label names and values, in order.
type Labels = Vec<(&'static str, String)>;

fn histogram_of(buckets: impl Iterator<Item = f64>) -> Histogram {
    Histogram::new(buckets)
}

fn seconds_buckets() -> Histogram {
    // 1 ms .. about 9 minutes.
    histogram_of(exponential_buckets(0.001, 2.0, 20))
}

fn bytes_buckets() -> Histogram {
    // 4 KiB .. 256 GiB.
    histogram_of(exponential_buckets(4096.0, 4.0, 14))
}

fn allocation_buckets() -> Histogram {
    // 5 ms .. about 80 s.
    histogram_of(exponential_buckets(0.005, 2.0, 15))
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The counters and histograms of events the control plane sees; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ControlMetrics {
    allocation_seconds: HistogramFamily,
    swap_out_bytes: HistogramFamily,
    swap_out_seconds: HistogramFamily,
    swap_in_bytes: HistogramFamily,
    swap_in_seconds: HistogramFamily,
    downscaler_actions: Family<Labels, Counter>,
    swap_in_requests: Family<Labels, Counter>,
    routed_invocations: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
    connections_open: Family<Labels, Gauge>,
    connections_refused: Family<Labels, Counter>,
    requests_in_flight: Family<Labels, Gauge>,
    functions: Arc<Mutex<FunctionTotals>>,
}

/// One of something counted by a gauge while it lasts (an open connection, a request in
/// flight): the gauge goes down when it is dropped.
#[derive(Debug)]
pub struct Held(Gauge);

impl Held {
    fn of(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            allocation_seconds: Family::new_with_constructor(allocation_buckets),
            swap_out_bytes: Family::new_with_constructor(bytes_buckets),
            swap_out_seconds: Family::new_with_constructor(seconds_buckets),
            swap_in_bytes: Family::new_with_constructor(bytes_buckets),
            swap_in_seconds: Family::new_with_constructor(seconds_buckets),
            downscaler_actions: Family::default(),
            swap_in_requests: Family::default(),
            routed_invocations: Family::default(),
            http_requests: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            requests_in_flight: Family::default(),
            functions: Arc::default(),
        }
    }
}

fn app_label(app: &str) -> Labels {
    vec![("app", app.to_owned())]
}

impl ControlMetrics {
    /// A process of `app` became ALLOCATED `secs` after its creation was asked for.
    pub fn observe_allocation(&self, app: &str, secs: f64) {
        self.allocation_seconds.get_or_create(&app_label(app)).observe(secs);
    }

    /// A process of `app` swapped out `bytes` in `secs` (request to SWAPPED_OUT).
    pub fn observe_swap_out(&self, app: &str, bytes: u64, secs: f64) {
        self.swap_out_bytes.get_or_create(&app_label(app)).observe(bytes as f64);
        self.swap_out_seconds.get_or_create(&app_label(app)).observe(secs);
    }

    /// A process of `app` swapped in a snapshot of `bytes` in `secs` (request to ALLOCATED).
    pub fn observe_swap_in(&self, app: &str, bytes: u64, secs: f64) {
        self.swap_in_bytes.get_or_create(&app_label(app)).observe(bytes as f64);
        self.swap_in_seconds.get_or_create(&app_label(app)).observe(secs);
    }

    /// The idle downscaler did `action` (`swap_out`) with `outcome` (`ok`, `failed`).
    pub fn count_downscaler_action(&self, action: &'static str, outcome: &'static str) {
        let labels = vec![("action", action.to_owned()), ("outcome", outcome.to_owned())];
        self.downscaler_actions.get_or_create(&labels).inc();
    }

    /// A process of `app` asked for a swap-in of a remote invocation's callee, answered with
    /// `outcome` (`ok`, or the status label of the refusal: [`status_label`]).
    pub fn count_swap_in_request(&self, app: &str, outcome: &str) {
        let labels = vec![("app", app.to_owned()), ("outcome", outcome.to_owned())];
        self.swap_in_requests.get_or_create(&labels).inc();
    }

    /// An invocation routed through the control plane to a process of `app` ended with
    /// `outcome`: `ok`, a data-plane status ([`status_label`]) or the control plane's reason.
    pub fn count_routed_invocation(&self, app: &str, outcome: &str) {
        let labels = vec![("app", app.to_owned()), ("outcome", outcome.to_owned())];
        self.routed_invocations.get_or_create(&labels).inc();
    }

    /// The HTTP API answered a `method` request on `route` (its template, e.g.
    /// `/apps/{app}/processes/{proc}`, or `unmatched`) with `status`.
    pub fn count_http_request(&self, method: &str, route: &str, status: u16) {
        let labels = vec![("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
        self.http_requests.get_or_create(&labels).inc();
    }

    /// A connection to `listener` (`http`, `control`) is open while the result lives.
    pub fn open_connection(&self, listener: &'static str) -> Held {
        Held::of(&self.connections_open.get_or_create(&vec![("listener", listener.to_owned())]))
    }

    /// A connection to `listener` (`http`, `control`) was closed at once: as many as its limit
    /// were open.
    pub fn count_refused_connection(&self, listener: &'static str) {
        self.connections_refused.get_or_create(&vec![("listener", listener.to_owned())]).inc();
    }

    /// A request of `kind` (`invocation`: routed invocations, `lifecycle`: process and
    /// application operations) is in flight while the result lives.
    pub fn begin_request(&self, kind: &'static str) -> Held {
        Held::of(&self.requests_in_flight.get_or_create(&vec![("kind", kind.to_owned())]))
    }

    /// Adds what a process reported of its functions since its previous report.
    pub fn add_function_reports(&self, app: &str, process: &str, reports: &[FunctionReport]) {
        let mut totals = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        totals.add(app, process, reports);
    }

    /// Forgets the per-function figures of a deleted process.
    pub fn forget_process(&self, app: &str, process: &str) {
        let mut totals = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        totals.functions.retain(|(a, p, _), _| a != app || p != process);
    }

    /// The statistics of each function of `process` of `app` that has run, by name: since the
    /// control plane first heard of the process, and over the last report that had any.
    pub fn function_stats(&self, app: &str, process: &str) -> Vec<FunctionStats> {
        let totals = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        totals
            .functions
            .iter()
            .filter(|((a, p, _), _)| a == app && p == process)
            .map(|((_, _, function), total)| FunctionStats {
                function: function.clone(),
                total: Figures::of(&total.latency, &total.errors),
                interval: Figures::of(&total.interval, &total.interval_errors),
            })
            .collect()
    }

    /// Every metric, in the Prometheus text format: the events counted so far, and the state of
    /// `processes` (every process the control plane knows, as it is now).
    pub fn encode(&self, processes: Vec<ProcessSnapshot>) -> Result<String, MetricsError> {
        let mut registry = Registry::default();
        registry.register(
            "praas_allocation_seconds",
            "Seconds from a process's creation request to ALLOCATED",
            self.allocation_seconds.clone(),
        );
        registry.register("praas_swap_out_bytes", "Bytes of each swap-out's snapshot", self.swap_out_bytes.clone());
        registry.register(
            "praas_swap_out_seconds",
            "Seconds from a swap-out request to SWAPPED_OUT",
            self.swap_out_seconds.clone(),
        );
        registry.register(
            "praas_swap_in_bytes",
            "Bytes of the snapshot each swap-in restored",
            self.swap_in_bytes.clone(),
        );
        registry.register(
            "praas_swap_in_seconds",
            "Seconds from a swap-in request to ALLOCATED",
            self.swap_in_seconds.clone(),
        );
        registry.register(
            "praas_downscaler_actions",
            "Actions of the idle downscaler, by action and outcome",
            self.downscaler_actions.clone(),
        );
        registry.register(
            "praas_swap_in_requests",
            "Swap-in requests of processes for the callees of their remote invocations, by application and outcome",
            self.swap_in_requests.clone(),
        );
        registry.register(
            "praas_routed_invocations",
            "Invocations routed through the control plane, by application and outcome",
            self.routed_invocations.clone(),
        );
        registry.register(
            "praas_http_requests",
            "Requests of the HTTP API, by method, route template and status",
            self.http_requests.clone(),
        );
        registry.register(
            "praas_connections_open",
            "Connections open now, by listener (http, control)",
            self.connections_open.clone(),
        );
        registry.register(
            "praas_connections_refused",
            "Connections closed at once because as many as the listener's limit were open, by listener",
            self.connections_refused.clone(),
        );
        registry.register(
            "praas_requests_in_flight",
            "Requests of the HTTP API in flight now, by kind (invocation, lifecycle)",
            self.requests_in_flight.clone(),
        );
        let functions = self.functions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        registry.register_collector(Box::new(StateCollector { processes, functions }));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// The figures of one process serving on its own (`praas process serve --metrics-listen`), in
/// the families a control plane exports for it: `report` is what the process counted since it
/// started ([`praas_dataplane::control_channel::totals`]).
pub fn encode_process(
    app: &str,
    process: &str,
    transport: &str,
    rdma: bool,
    mut report: Metrics,
) -> Result<String, MetricsError> {
    let mut functions = FunctionTotals::default();
    functions.add(app, process, &std::mem::take(&mut report.functions));
    let snapshot = ProcessSnapshot {
        app: app.to_owned(),
        process: process.to_owned(),
        status: ProcessStatus::Allocated,
        metrics: report,
        transport: Some(transport.to_owned()),
        rdma,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector { processes: vec![snapshot], functions }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A data-plane status as labels name it: `UnknownFunction` as `unknown_function`.
pub fn status_label(status: praas_dataplane::Status) -> String {
    snake_case(&format!("{status:?}"))
}

/// `UnknownFunction` as `unknown_function`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One process as a scrape sees it.
#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    /// Application.
    pub app: String,
    /// Process name.
    pub process: String,
    /// Lifecycle status now.
    pub status: ProcessStatus,
    /// What it last reported over the control channel (zeros before its first report; a
    /// process that swaps back in starts again from zero, as counters do when they reset).
    pub metrics: Metrics,
    /// Its data-plane transport while it runs (`uring`, `mio`).
    pub transport: Option<String>,
    /// Whether it also serves RDMA.
    pub rdma: bool,
}

/// A function's figures over some span: since start, or one metrics interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Invocations that ran (failed or not).
    pub count: u64,
    /// Invocations that failed, those refused before running included, by status label
    /// (`function_failed`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Median latency, ns (within 1/32: the process's histogram buckets).
    pub p50_ns: u64,
    /// 99th percentile latency, ns.
    pub p99_ns: u64,
    /// Longest latency, ns (exact).
    pub max_ns: u64,
}

impl Figures {
    fn of(latency: &LatencyHistogram, errors: &BTreeMap<u16, u64>) -> Self {
        Self {
            count: latency.count(),
            errors: errors.iter().map(|(&code, &n)| (status_label(Status::from_code(code)), n)).collect(),
            p50_ns: latency.quantile(0.5),
            p99_ns: latency.quantile(0.99),
            max_ns: latency.max_ns,
        }
    }
}

/// One function's statistics, as `praas process stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionStats {
    /// The function's name.
    pub function: String,
    /// Since the control plane first heard of the process (a process swapped back in goes on
    /// counting from where it was).
    pub total: Figures,
    /// Over the process's last report that had any invocation of the function's process (one
    /// metrics interval).
    pub interval: Figures,
}

/// Per-function figures added up from the processes' reports.
#[derive(Debug, Clone, Default)]
struct FunctionTotals {
    functions: BTreeMap<(String, String, String), FunctionTotal>,
}

#[derive(Debug, Clone, Default)]
struct FunctionTotal {
    latency: LatencyHistogram,
    errors: BTreeMap<u16, u64>,
    /// The last report's figures.
    interval: LatencyHistogram,
    interval_errors: BTreeMap<u16, u64>,
    messages_put: u64,
    messages_got: u64,
}

impl FunctionTotals {
    fn add(&mut self, app: &str, process: &str, reports: &[FunctionReport]) {
        if reports.is_empty() {
            return;
        }
        // A report names the functions with something new: the others had an empty interval.
        for ((a, p, _), total) in self.functions.iter_mut() {
            if a == app && p == process {
                total.interval = LatencyHistogram::default();
                total.interval_errors.clear();
            }
        }
        for report in reports {
            let key = (app.to_owned(), process.to_owned(), report.name.clone());
            let total = self.functions.entry(key).or_default();
            total.latency.add(&report.latency);
            total.interval = report.latency.clone();
            for &(code, n) in &report.errors {
                *total.errors.entry(code).or_default() += n;
                *total.interval_errors.entry(code).or_default() += n;
            }
            total.messages_put += report.messages_put;
            total.messages_got += report.messages_got;
        }
    }
}

/// `latency`'s fine buckets counted into the buckets of [`LATENCY_BOUNDS_NS`] (and `+Inf`), each
/// at its midpoint: the per-bucket counts a Prometheus histogram is encoded from.
fn prometheus_buckets(latency: &LatencyHistogram) -> Vec<(f64, u64)> {
    let mut counts = [0u64; LATENCY_BOUNDS_NS.len() + 1];
    for &(index, n) in &latency.buckets {
        let (low, high) = bucket_bounds(usize::from(index));
        let mid = low + (high - low) / 2;
        let at = LATENCY_BOUNDS_NS.iter().position(|&bound| mid <= bound).unwrap_or(LATENCY_BOUNDS_NS.len());
        counts[at] += n;
    }
    LATENCY_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).chain([f64::INFINITY]).zip(counts).collect()
}

/// Encodes the state figures at a scrape.
#[derive(Debug)]
struct StateCollector {
    processes: Vec<ProcessSnapshot>,
    functions: FunctionTotals,
}

/// Writes one metric family of `series` (labels and the metric of each).
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram known by its bucket counts, for [`family`].
#[derive(Debug)]
struct BucketedHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for BucketedHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let process_labels = |p: &ProcessSnapshot| vec![("app", p.app.clone()), ("process", p.process.clone())];

        // Processes by application and status: every status of every application that has
        // processes, zeros included, so that a series does not vanish when its count drops.
        let mut by_status: BTreeMap<&str, HashMap<ProcessStatus, i64>> = BTreeMap::new();
        for p in &self.processes {
            *by_status.entry(&p.app).or_default().entry(p.status).or_default() += 1;
        }
        let series = by_status.iter().flat_map(|(app, counts)| {
            ProcessStatus::ALL.into_iter().map(move |status| {
                let labels = vec![("app", (*app).to_owned()), ("status", status.name().to_owned())];
                (labels, ConstGauge::new(counts.get(&status).copied().unwrap_or(0)))
            })
        });
        family(&mut encoder, "praas_processes", "Processes by application and status", MetricType::Gauge, series)?;

        let counter = |f: fn(&Metrics) -> u64| {
            self.processes.iter().map(move |p| (process_labels(p), ConstCounter::new(f(&p.metrics))))
        };
        let gauge = |f: fn(&Metrics) -> u64| {
            self.processes.iter().map(move |p| (process_labels(p), ConstGauge::new(f(&p.metrics) as i64)))
        };
        let info = self.processes.iter().filter_map(|p| {
            let mut labels = process_labels(p);
            labels.push(("transport", p.transport.clone()?));
            labels.push(("rdma", p.rdma.to_string()));
            Some((labels, ConstGauge::new(1)))
        });
        family(
            &mut encoder,
            "praas_process_info",
            "1 for each running process, labelled with the transport of its data-plane address and whether it also serves RDMA",
            MetricType::Gauge,
            info,
        )?;
        family(
            &mut encoder,
            "praas_process_invocations",
            "Client invocations the process completed, as it last reported",
            MetricType::Counter,
            counter(|m| m.invocations),
        )?;
        family(
            &mut encoder,
            "praas_process_local_invocations",
            "Local invocations (between the functions of the process) it completed, as it last reported",
            MetricType::Counter,
            counter(|m| m.local_invocations),
        )?;
        let compute =
            self.processes.iter().map(|p| (process_labels(p), ConstCounter::new(p.metrics.compute_ns as f64 / 1e9)));
        family(
            &mut encoder,
            "praas_process_compute_seconds",
            "Seconds the process spent in functions, as it last reported",
            MetricType::Counter,
            compute,
        )?;
        family(
            &mut encoder,
            "praas_process_in_flight",
            "Invocations running in the process, as it last reported",
            MetricType::Gauge,
            gauge(|m| m.in_flight),
        )?;
        family(
            &mut encoder,
            "praas_process_state_keys",
            "Keys of the process's state, as it last reported",
            MetricType::Gauge,
            gauge(|m| m.state_keys),
        )?;
        family(
            &mut encoder,
            "praas_process_state_bytes",
            "Bytes of the values of the process's state, as it last reported",
            MetricType::Gauge,
            gauge(|m| m.state_bytes),
        )?;
        let by_wire = |counts: fn(&Metrics) -> praas_dataplane::peer::DeliveryCounts| {
            self.processes.iter().flat_map(move |p| {
                let counts = counts(&p.metrics);
                [("tcp", counts.tcp), ("rdma", counts.rdma)].map(|(wire, count)| {
                    let mut labels = process_labels(p);
                    labels.push(("wire", wire.to_owned()));
                    (labels, ConstCounter::new(count))
                })
            })
        };
        family(
            &mut encoder,
            "praas_process_messages_sent",
            "Messages the process delivered to its peers, by wire, as it last reported",
            MetricType::Counter,
            by_wire(|m| m.messages_sent),
        )?;
        family(
            &mut encoder,
            "praas_process_remote_calls",
            "Remote invocations the process made that their callees answered, by wire, as it last reported",
            MetricType::Counter,
            by_wire(|m| m.remote_calls),
        )?;
        let last = self
            .processes
            .iter()
            .filter(|p| p.metrics.last_invocation_ns > 0)
            .map(|p| (process_labels(p), ConstGauge::new(p.metrics.last_invocation_ns as f64 / 1e9)));
        family(
            &mut encoder,
            "praas_process_last_invocation_timestamp_seconds",
            "When the process's last invocation ended, seconds since the epoch",
            MetricType::Gauge,
            last,
        )?;
        family(
            &mut encoder,
            "praas_process_messages_received",
            "Messages put into the process's mailbox, as it last reported",
            MetricType::Counter,
            counter(|m| m.messages_received),
        )?;
        family(
            &mut encoder,
            "praas_process_messages_got",
            "Messages the process's functions got from its mailbox, as it last reported",
            MetricType::Counter,
            counter(|m| m.messages_got),
        )?;
        family(
            &mut encoder,
            "praas_process_mailbox_depth",
            "Messages waiting in the process's mailbox, as it last reported",
            MetricType::Gauge,
            gauge(|m| m.mailbox_depth),
        )?;
        family(
            &mut encoder,
            "praas_process_pool_bytes_in_use",
            "Bytes of the process's buffer pool handed out, as it last reported",
            MetricType::Gauge,
            gauge(|m| m.pool_bytes),
        )?;
        family(
            &mut encoder,
            "praas_process_pool_budget_bytes",
            "Bytes the process's buffer pool may hand out at once",
            MetricType::Gauge,
            gauge(|m| m.pool_budget),
        )?;
        self.encode_functions(&mut encoder)
    }
}

impl StateCollector {
    /// The per-function figures the processes reported, if any did.
    fn encode_functions(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = |(app, process, function): &(String, String, String)| {
            vec![("app", app.clone()), ("process", process.clone()), ("function", function.clone())]
        };
        let functions = &self.functions.functions;
        family(
            encoder,
            "praas_function_invocations",
            "Invocations of the function that ran (failed or not), as its process reported",
            MetricType::Counter,
            functions.iter().map(|(key, t)| (labels(key), ConstCounter::new(t.latency.count()))),
        )?;
        let errors = functions.iter().flat_map(|(key, t)| {
            t.errors.iter().map(move |(&code, &count)| {
                let mut labels = labels(key);
                labels.push(("status", status_label(Status::from_code(code))));
                (labels, ConstCounter::new(count))
            })
        });
        family(
            encoder,
            "praas_function_errors",
            "Invocations of the function that failed, those refused before running included, by status",
            MetricType::Counter,
            errors,
        )?;
        let latency = functions.iter().filter(|(_, t)| t.latency.count() > 0).map(|(key, t)| {
            let histogram = BucketedHistogram {
                sum: t.latency.sum_ns as f64 / 1e9,
                count: t.latency.count(),
                buckets: prometheus_buckets(&t.latency),
            };
            (labels(key), histogram)
        });
        family(
            encoder,
            "praas_function_messages_put",
            "Messages the function's invocations put (acknowledged by their destination)",
            MetricType::Counter,
            functions.iter().map(|(key, t)| (labels(key), ConstCounter::new(t.messages_put))),
        )?;
        family(
            encoder,
            "praas_function_messages_got",
            "Messages the function's invocations got",
            MetricType::Counter,
            functions.iter().map(|(key, t)| (labels(key), ConstCounter::new(t.messages_got))),
        )?;
        family(
            encoder,
            "praas_function_latency_seconds",
            "Latency of the function's invocations in its process, from the frame's arrival at the dispatcher to the function's return",
            MetricType::Histogram,
            latency,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(app: &str, process: &str, status: ProcessStatus, invocations: u64) -> ProcessSnapshot {
        let metrics = Metrics { invocations, compute_ns: 1_500_000_000, ..Metrics::default() };
        ProcessSnapshot { app: app.into(), process: process.into(), status, metrics, transport: None, rdma: false }
    }

    fn line<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn events_and_state_are_encoded() {
        let metrics = ControlMetrics::default();
        metrics.observe_swap_out("demo", 1 << 20, 0.25);
        metrics.count_http_request("GET", "/apps/{app}", 200);
        metrics.count_routed_invocation("demo", "ok");
        metrics.count_routed_invocation("demo", &status_label(praas_dataplane::Status::FunctionFailed));
        let text = metrics
            .encode(vec![
                snapshot("demo", "p1", ProcessStatus::Allocated, 7),
                snapshot("demo", "p2", ProcessStatus::SwappedOut, 0),
            ])
            .unwrap();
        assert_eq!(line(&text, "praas_swap_out_bytes_count"), Some("praas_swap_out_bytes_count{app=\"demo\"} 1"));
        assert!(text.contains("praas_swap_out_seconds_sum{app=\"demo\"} 0.25"), "{text}");
        assert!(text.contains("praas_http_requests_total{method=\"GET\",route=\"/apps/{app}\",status=\"200\"} 1"));
        assert!(text.contains("praas_routed_invocations_total{app=\"demo\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("praas_routed_invocations_total{app=\"demo\",outcome=\"function_failed\"} 1"));
        assert!(text.contains("praas_processes{app=\"demo\",status=\"ALLOCATED\"} 1"), "{text}");
        assert!(text.contains("praas_processes{app=\"demo\",status=\"CLOSED\"} 0"), "{text}");
        assert!(text.contains("praas_process_invocations_total{app=\"demo\",process=\"p1\"} 7"), "{text}");
        assert!(text.contains("praas_process_compute_seconds_total{app=\"demo\",process=\"p1\"} 1.5"), "{text}");
        assert!(!text.contains("praas_function_"), "no per-function figure before a process reports one");
        assert!(text.contains("praas_process_mailbox_depth{app=\"demo\",process=\"p1\"} 0"), "{text}");
    }

    #[test]
    fn function_reports_add_up_into_counters_a_histogram_and_stats() {
        let metrics = ControlMetrics::default();
        let stats = praas_dataplane::stats::FunctionStats::new();
        stats.record(900, Status::Ok);
        stats.record(800, Status::Ok);
        stats.record(20_000_000_000, Status::FunctionFailed);
        let latency = stats.snapshot().latency;
        let report = |latency: &LatencyHistogram| FunctionReport {
            name: "echo".into(),
            latency: latency.clone(),
            errors: vec![(Status::FunctionFailed.code(), 1)],
            messages_put: 2,
            messages_got: 0,
        };
        metrics.add_function_reports("demo", "p1", &[report(&latency)]);
        metrics.add_function_reports("demo", "p1", &[report(&latency)]);
        let text = metrics.encode(Vec::new()).unwrap();
        let labels = "app=\"demo\",process=\"p1\",function=\"echo\"";
        assert!(text.contains(&format!("praas_function_invocations_total{{{labels}}} 6")), "{text}");
        assert!(text.contains(&format!("praas_function_errors_total{{{labels},status=\"function_failed\"}} 2")));
        assert!(text.contains(&format!("praas_function_latency_seconds_count{{{labels}}} 6")), "{text}");
        assert!(text.contains(&format!("praas_function_latency_seconds_bucket{{{labels},le=\"1e-06\"}} 4")), "{text}");
        assert!(text.contains(&format!("praas_function_latency_seconds_bucket{{{labels},le=\"10\"}} 4")), "{text}");
        assert!(text.contains(&format!("praas_function_latency_seconds_bucket{{{labels},le=\"+Inf\"}} 6")));
        assert!(text.contains(&format!("praas_function_messages_put_total{{{labels}}} 4")), "{text}");

        // A report without the function: its interval is empty, its totals stay.
        let other = FunctionReport {
            name: "noop".into(),
            latency: latency.clone(),
            errors: Vec::new(),
            messages_put: 0,
            messages_got: 0,
        };
        metrics.add_function_reports("demo", "p1", &[other]);
        let stats = metrics.function_stats("demo", "p1");
        assert_eq!(stats.iter().map(|s| s.function.as_str()).collect::<Vec<_>>(), ["echo", "noop"]);
        let echo = &stats[0];
        assert_eq!((echo.total.count, echo.interval.count), (6, 0));
        assert_eq!(echo.total.errors.get("function_failed"), Some(&2));
        assert!(echo.total.p50_ns < 1_000 && echo.total.max_ns == 20_000_000_000, "{echo:?}");
        assert_eq!(stats[1].interval.count, 3);
        metrics.forget_process("demo", "p1");
        assert!(!metrics.encode(Vec::new()).unwrap().contains("praas_function_"));
        assert!(metrics.function_stats("demo", "p1").is_empty());
    }

    #[test]
    fn statuses_are_labelled_in_snake_case() {
        assert_eq!(snake_case("UnknownFunction"), "unknown_function");
        assert_eq!(status_label(praas_dataplane::Status::Timeout), "timeout");
    }
}
