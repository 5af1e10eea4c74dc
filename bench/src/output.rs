//! Where a run's results go: each [`Record`] as a JSON line at once (`--json`) or as a row of the
//! table at the end, and with `--plot DIR` as figures ([`crate::plot`]) at the end.

use std::io::{self, Write};

use hdrhistogram::Histogram;
use thiserror::Error;

use crate::cli::OutputArgs;
use crate::plot::{Distribution, PlotError};
use crate::report::{table, Record, RunInfo};

/// Why a report could not be written.
#[derive(Debug, Error)]
pub enum ReportError {
    /// Standard output failed.
    #[error(transparent)]
    Print(#[from] io::Error),
    /// A figure could not be written.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// Where records go as they are produced: JSON lines at once, or a table at the end; and with
/// `--plot DIR` figures at the end.
#[derive(Debug)]
pub struct Reporter {
    /// The run (subcommand and transport: `invoke-tcp`), first part of the figures' file names.
    run: String,
    json: bool,
    plot: Option<std::path::PathBuf>,
    records: Vec<Record>,
    distributions: Vec<Distribution>,
}

impl Reporter {
    /// A reporter of run `run` (`invoke-tcp`, `swap`: names its figures) writing where `output`
    /// says.
    pub fn new(run: impl Into<String>, output: &OutputArgs) -> Self {
        Self {
            run: run.into(),
            json: output.json,
            plot: output.plot.clone(),
            records: Vec::new(),
            distributions: Vec::new(),
        }
    }

    /// Takes one latency record and the histograms it summarises (ours, and the baseline's where
    /// it was measured here), for the figures' CDFs.
    pub fn push_measured(
        &mut self,
        record: Record,
        ours: &Histogram<u64>,
        baseline: Option<&Histogram<u64>>,
    ) -> io::Result<()> {
        if self.plot.is_some() {
            self.distributions.push(Distribution::of(&record, ours, baseline));
        }
        self.push(record)
    }

    /// Takes one record; in JSON mode prints it now, so a long run shows progress.
    pub fn push(&mut self, record: Record) -> io::Result<()> {
        if self.json {
            let mut out = io::stdout().lock();
            writeln!(out, "{}", record.json())?;
            out.flush()?;
        }
        self.records.push(record);
        Ok(())
    }

    /// In table mode, prints the table of everything pushed, under a line naming placement and
    /// host; with `--plot DIR`, writes the figures of everything pushed into DIR.
    pub fn finish(self, info: &RunInfo) -> Result<(), ReportError> {
        if let Some(dir) = &self.plot {
            let files = crate::plot::write_figures(dir, &self.run, info, &self.records, &self.distributions)?;
            eprintln!("praas-bench: {} figures in {}", files.len(), dir.display());
        }
        if self.json {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        writeln!(out, "transport={} placement={} host={}", info.transport, info.placement, info.host)?;
        write!(out, "{}", table(&self.records))?;
        writeln!(
            out,
            "ratio = praas / baseline: for latencies lower is better; for throughput (k/s) higher is better"
        )?;
        Ok(out.flush()?)
    }
}
