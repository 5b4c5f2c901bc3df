//! The process: build information, uptime, CPU time, memory and open descriptors.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Which build this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    /// The source commit, or `unknown` for a build outside a git checkout.
    pub commit: &'static str,
}

impl Default for BuildInfo {
    fn default() -> Self {
        Self { version: "unknown", commit: "unknown" }
    }
}

/// The process's families. Read when rendered: they cost nothing between scrapes.
#[derive(Debug)]
pub struct ProcessMetrics {
    started: Instant,
    uptime: Gauge<f64, AtomicU64>,
    cpu: Gauge<f64, AtomicU64>,
    resident: Gauge,
    open_fds: Gauge,
}

impl ProcessMetrics {
    pub(crate) fn register(registry: &mut Registry, build: &BuildInfo) -> Self {
        let metrics = Self {
            started: Instant::now(),
            uptime: Gauge::default(),
            cpu: Gauge::default(),
            resident: Gauge::default(),
            open_fds: Gauge::default(),
        };
        registry.register(
            "build",
            "The version and source commit of this build",
            Info::new([("version", build.version), ("commit", build.commit)]),
        );
        registry.register_with_unit(
            "uptime",
            "Time since this instance started",
            Unit::Seconds,
            metrics.uptime.clone(),
        );
        registry.register_with_unit(
            "process_cpu",
            "CPU time (user and system) this process has used",
            Unit::Seconds,
            metrics.cpu.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of this process",
            Unit::Bytes,
            metrics.resident.clone(),
        );
        registry.register("process_open_fds", "File descriptors this process holds open", metrics.open_fds.clone());
        metrics
    }

    /// Reads the figures now (Linux's /proc; elsewhere only the uptime).
    pub(crate) fn refresh(&self) {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        if let Some(usage) = linux::usage() {
            self.cpu.set(usage.cpu_seconds);
            self.resident.set(usage.resident_bytes);
            self.open_fds.set(usage.open_fds);
        }
    }
}

mod linux {
    /// What /proc says about this process.
    pub(super) struct Usage {
        pub cpu_seconds: f64,
        pub resident_bytes: i64,
        pub open_fds: i64,
    }

    /// The kernel's clock ticks per second for /proc's CPU times (`USER_HZ`, 100 on every
    /// Linux architecture Ringline builds for).
    const TICKS_PER_SECOND: f64 = 100.0;
    /// The page size /proc/self/statm counts in (4 KiB on x86-64 and most arm64 kernels).
    const PAGE_BYTES: i64 = 4096;

    pub(super) fn usage() -> Option<Usage> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) in parentheses: utime and
        // stime are the 14th and 15th fields of the line, the 12th and 13th after it.
        let after_name = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident_pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(Usage {
            cpu_seconds: ticks / TICKS_PER_SECOND,
            resident_bytes: resident_pages * PAGE_BYTES,
            open_fds: i64::try_from(open_fds).unwrap_or(i64::MAX),
        })
    }
}
