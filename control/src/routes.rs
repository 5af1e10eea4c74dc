//! The REST paths of the control plane's API, spelled once: the templates the router serves
//! ([`crate::api::router`]) and functions that build each concrete path for its clients
//! ([`crate::cli`], the `praas` tool). Names go into paths as they are, percent-encoding nothing:
//! the control plane accepts only names of [`crate::model::NAME_RULE`], which need none.

/// Every application (`GET`).
pub const APPS: &str = "/apps";
/// One application (`PUT` creates, `GET`, `DELETE`).
pub const APP: &str = "/apps/{app}";
/// The client key of an application (`GET`).
pub const CLIENT_KEY: &str = "/apps/{app}/client-key";
/// The processes of an application (`GET`).
pub const PROCESSES: &str = "/apps/{app}/processes";
/// One process (`PUT` creates, `GET`, `DELETE`).
pub const PROCESS: &str = "/apps/{app}/processes/{proc}";
/// Swaps a process out (`POST`).
pub const SWAP: &str = "/apps/{app}/processes/{proc}/swap";
/// Swaps a process back in (`POST`).
pub const SWAP_IN: &str = "/apps/{app}/processes/{proc}/swapin";
/// The statistics of each function of a process (`GET`; `praas process stats`).
pub const STATS: &str = "/apps/{app}/processes/{proc}/stats";
/// Stops a process (`POST`).
pub const STOP: &str = "/apps/{app}/processes/{proc}/stop";
/// Invokes a function (`POST`, the input as the body); the query `?process=NAME` names the
/// process to run on.
pub const INVOKE: &str = "/apps/{app}/invoke/{function}";
/// The query parameter of [`INVOKE`] naming the process.
pub const INVOKE_PROCESS: &str = "process";
/// Every metric in the Prometheus text format (`GET`; docs/observability.md lists them).
pub const METRICS: &str = "/metrics";

/// `template` with its `{...}` segments replaced by `values`, in order.
fn fill(template: &str, values: &[&str]) -> String {
    let mut path = String::with_capacity(template.len() + values.iter().map(|v| v.len()).sum::<usize>());
    let mut values = values.iter();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        path.push_str(values.next().copied().unwrap_or_default());
        rest = &rest[close..];
    }
    path.push_str(rest);
    path
}

/// [`APPS`].
pub fn apps() -> String {
    APPS.to_owned()
}

/// [`STATS`] of process `name` of application `app`.
pub fn stats(app: &str, name: &str) -> String {
    fill(STATS, &[app, name])
}

/// [`METRICS`].
pub fn metrics() -> String {
    METRICS.to_owned()
}

/// [`APP`] of application `app`.
pub fn app(app: &str) -> String {
    fill(APP, &[app])
}

/// [`CLIENT_KEY`] of application `app`.
pub fn client_key(app: &str) -> String {
    fill(CLIENT_KEY, &[app])
}

/// [`PROCESSES`] of application `app`.
pub fn processes(app: &str) -> String {
    fill(PROCESSES, &[app])
}

/// [`PROCESS`]: process `name` of application `app`.
pub fn process(app: &str, name: &str) -> String {
    fill(PROCESS, &[app, name])
}

/// [`SWAP`] of process `app`/`name`.
pub fn swap(app: &str, name: &str) -> String {
    fill(SWAP, &[app, name])
}

/// [`SWAP_IN`] of process `app`/`name`.
pub fn swap_in(app: &str, name: &str) -> String {
    fill(SWAP_IN, &[app, name])
}

/// [`STOP`] of process `app`/`name`.
pub fn stop(app: &str, name: &str) -> String {
    fill(STOP, &[app, name])
}

/// [`INVOKE`] of `function` of application `app`, on `process` when named.
pub fn invoke(app: &str, function: &str, process: Option<&str>) -> String {
    let mut path = fill(INVOKE, &[app, function]);
    if let Some(process) = process {
        path.push_str(&format!("?{INVOKE_PROCESS}={process}"));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_paths_fill_the_templates() {
        assert_eq!(apps(), "/apps");
        assert_eq!(metrics(), "/metrics");
        assert_eq!(stats("a", "p"), "/apps/a/processes/p/stats");
        assert_eq!(app("demo"), "/apps/demo");
        assert_eq!(client_key("demo"), "/apps/demo/client-key");
        assert_eq!(processes("demo"), "/apps/demo/processes");
        assert_eq!(process("demo", "p1"), "/apps/demo/processes/p1");
        assert_eq!(swap("demo", "p1"), "/apps/demo/processes/p1/swap");
        assert_eq!(swap_in("demo", "p1"), "/apps/demo/processes/p1/swapin");
        assert_eq!(stop("demo", "p1"), "/apps/demo/processes/p1/stop");
        assert_eq!(invoke("demo", "echo", None), "/apps/demo/invoke/echo");
        assert_eq!(invoke("demo", "echo", Some("p1")), "/apps/demo/invoke/echo?process=p1");
    }
}
