//! Human-readable output of the admin commands: aligned tables and short summaries. `--json`
//! output does not come through here (it prints the admin API's result objects as they are).

use elk_protocol::admin::{AdminStats, IdState};
use elk_protocol::messages::{JobRecord, JobState, PartitionRecord, PartitionStatus, unix_ms_now};
use std::fmt::Write;

/// A text table whose columns are as wide as their widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    /// Columns aligned right (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns by header; a header starting with `>` is right-aligned (the `>` is not shown).
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate() {
                if index > 0 {
                    line.push_str("  ");
                }
                let pad = widths[index].saturating_sub(cell.chars().count());
                if self.right[index] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Active => "active",
        JobState::Paused => "paused",
        JobState::Cancelled => "cancelled",
        JobState::Completed => "completed",
    }
}

pub fn status_name(status: PartitionStatus) -> &'static str {
    match status {
        PartitionStatus::Pending => "pending",
        PartitionStatus::Granted => "granted",
        PartitionStatus::Revoking => "revoking",
        PartitionStatus::Completed => "completed",
        PartitionStatus::Failed => "failed",
    }
}

/// `[min, max]` for a fixed job, `min..` (and how far the planner reported) for an open-ended one.
pub fn job_range(job: &JobRecord) -> String {
    if job.spec.open_ended {
        match job.known_max {
            Some(max) => format!("{}.. (max {max})", job.spec.range.first()),
            None => format!("{}.. (no data yet)", job.spec.range.first()),
        }
    } else {
        format!("{}..={}", job.spec.range.first(), job.spec.range.last())
    }
}

/// Completed share of the job's known IDs, in percent.
pub fn percent(job: &JobRecord) -> f64 {
    let total = job.ids_total();
    if total == 0 {
        return if job.state == JobState::Completed {
            100.0
        } else {
            0.0
        };
    }
    100.0 * job.ids_completed.min(total) as f64 / total as f64
}

pub fn jobs_table(jobs: &[JobRecord]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "RANGE",
        ">PARTITIONS",
        ">FAILED",
        ">IDS DONE",
        ">PROGRESS",
    ]);
    for job in jobs {
        table.row(vec![
            job.name.to_string(),
            state_name(job.state).to_owned(),
            job_range(job),
            format!("{}/{}", job.partitions_completed, job.partitions_total),
            job.partitions_failed.to_string(),
            format!("{}/{}", job.ids_completed, job.ids_total()),
            format!("{:.1}%", percent(job)),
        ]);
    }
    table.render()
}

/// Every field of one job, one per line.
pub fn job_details(job: &JobRecord) -> String {
    let mut out = String::new();
    let spec = &job.spec;
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<22} {value}");
    };
    line("name", job.name.to_string());
    line("state", state_name(job.state).to_owned());
    line(
        "kind",
        if spec.open_ended {
            "open-ended (planner)".to_owned()
        } else {
            "fixed range".to_owned()
        },
    );
    line("range", job_range(job));
    line("partition size", spec.partition_size.to_string());
    line("max attempts", spec.max_attempts.to_string());
    line("retry backoff", format!("{} ms", spec.retry_backoff_ms));
    if spec.open_ended {
        line("lookahead", spec.lookahead.to_string());
    }
    line("cursor", job.cursor.to_string());
    line(
        "partitions",
        format!(
            "{} created, {} completed ({} compacted), {} failed",
            job.partitions_total,
            job.partitions_completed,
            job.partitions_compacted,
            job.partitions_failed
        ),
    );
    line(
        "ids",
        format!(
            "{}/{} done ({:.1}%)",
            job.ids_completed,
            job.ids_total(),
            percent(job)
        ),
    );
    line(
        "low watermark",
        job.low_watermark
            .map_or_else(|| "-".to_owned(), |low| low.to_string()),
    );
    if !job.completed_above_watermark.is_empty() {
        let ranges: Vec<String> = job
            .completed_above_watermark
            .iter()
            .map(|r| r.to_string())
            .collect();
        line("completed above it", ranges.join(" "));
    }
    line("created", age(job.created_unix_ms));
    if let Some(done) = job.completed_unix_ms {
        line("completed", age(done));
    }
    line("epoch", job.epoch.to_string());
    out
}

/// How long ago a Unix-ms timestamp was, e.g. `3m12s ago`.
pub fn age(unix_ms: u64) -> String {
    let now = unix_ms_now();
    if unix_ms > now {
        return format!("in {}", duration((unix_ms - now) / 1000));
    }
    format!("{} ago", duration((now - unix_ms) / 1000))
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn partitions_table(partitions: &[PartitionRecord]) -> String {
    if partitions.is_empty() {
        return "no partitions\n".to_owned();
    }
    let mut table = Table::new(&[
        "JOB",
        ">ID",
        "RANGE",
        "STATUS",
        "OWNER",
        ">CHECKPOINT",
        ">ATTEMPTS",
        "NOTE",
    ]);
    for partition in partitions {
        let note = match (&partition.not_before_unix_ms, &partition.error) {
            (Some(at), Some(error)) => format!("retry {}: {error}", age(*at)),
            (Some(at), None) => format!("retry {}", age(*at)),
            (None, Some(error)) => error.clone(),
            (None, None) => String::new(),
        };
        let note = match holder_deaths(partition) {
            Some(deaths) if note.is_empty() => deaths,
            Some(deaths) => format!("{note}; {deaths}"),
            None => note,
        };
        table.row(vec![
            partition.job.to_string(),
            partition.id.to_string(),
            partition.range.to_string(),
            status_name(partition.status).to_owned(),
            partition
                .owner
                .as_ref()
                .map_or_else(|| "-".to_owned(), |owner| owner.id.to_string()),
            partition
                .checkpoint
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            partition.attempts.to_string(),
            one_line(&note, 100),
        ]);
    }
    table.render()
}

/// The holders that died holding `partition` and when (`died: w-1 3m ago, w-2 1m ago`), if any.
fn holder_deaths(partition: &PartitionRecord) -> Option<String> {
    if partition.holder_deaths.is_empty() {
        return None;
    }
    let deaths: Vec<String> = partition
        .holder_deaths
        .iter()
        .map(|death| format!("{} {}", death.member.id, age(death.at_unix_ms)))
        .collect();
    Some(format!("died: {}", deaths.join(", ")))
}

/// The first line of `text`, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn id_status(job: &str, id: u64, state: &IdState) -> String {
    match state {
        IdState::InPartition { partition } => {
            let mut out = format!(
                "{job} id {id}: in partition {} {} ({}",
                partition.id,
                partition.range,
                status_name(partition.status)
            );
            if let Some(owner) = &partition.owner {
                let _ = write!(out, ", owner {}", owner.id);
            }
            match partition.checkpoint {
                Some(checkpoint) if checkpoint >= id => out.push_str(", this id is done"),
                Some(checkpoint) => {
                    let _ = write!(out, ", checkpoint {checkpoint}");
                }
                None => {}
            }
            if let Some(error) = &partition.error {
                let _ = write!(out, ", last error: {}", one_line(error, 80));
            }
            if let Some(deaths) = holder_deaths(partition) {
                let _ = write!(out, ", holders {deaths}");
            }
            out.push_str(")\n");
            out
        }
        IdState::Completed => format!("{job} id {id}: completed\n"),
        IdState::NotPlanned => format!("{job} id {id}: not planned yet (no partition covers it)\n"),
    }
}

pub fn stats(stats: &AdminStats) -> String {
    let mut table = Table::new(&["COUNTER", ">VALUE"]);
    let mut row = |name: &str, value: u64| table.row(vec![name.to_owned(), value.to_string()]);
    row("assigner epoch", stats.epoch.get());
    row("jobs", stats.jobs);
    row("live workers", stats.live_workers);
    for (status, count) in &stats.partitions {
        row(&format!("partitions {status}"), *count);
    }
    row("progress applied", stats.progress_applied);
    row("progress rejected", stats.progress_rejected);
    row("progress malformed", stats.progress_malformed);
    row("gaps detected", stats.gaps_detected);
    row("gaps repaired", stats.gaps_repaired);
    row("overlaps detected", stats.overlaps_detected);
    row("revocations", stats.revocations);
    row("revokes overdue", stats.revokes_overdue);
    row("retries scheduled", stats.retries_scheduled);
    row("partitions compacted", stats.partitions_compacted);
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::messages::JobSpec;
    use elk_types::{Epoch, IdRange, JobName};

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", ">COUNT"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["longer".into(), "1234".into()]);
        assert_eq!(
            table.render(),
            "NAME    COUNT\na           1\nlonger   1234\n"
        );
    }

    #[test]
    fn job_rows_show_progress_and_ranges() {
        let mut job = JobRecord::new(
            JobName::new("backfill").unwrap(),
            JobSpec::fixed(IdRange::new(1, 1000).unwrap(), 100),
            Epoch(1),
            0,
        );
        job.ids_completed = 250;
        job.partitions_total = 10;
        job.partitions_completed = 2;
        let text = jobs_table(std::slice::from_ref(&job));
        assert!(text.contains("backfill"), "{text}");
        assert!(text.contains("1..=1000"), "{text}");
        assert!(text.contains("25.0%"), "{text}");
        assert!(text.contains("2/10"), "{text}");

        let mut open = JobRecord::new(
            JobName::new("events").unwrap(),
            JobSpec::open_ended(5, 10),
            Epoch(1),
            0,
        );
        assert_eq!(job_range(&open), "5.. (no data yet)");
        assert_eq!(percent(&open), 0.0);
        open.known_max = Some(104);
        assert_eq!(job_range(&open), "5.. (max 104)");
        assert_eq!(open.ids_total(), 100);
        assert!(job_details(&open).contains("lookahead"));
    }

    #[test]
    fn quarantined_partitions_name_the_holders_that_died() {
        use elk_protocol::messages::{HolderDeath, MemberRef};
        use elk_types::{Incarnation, MemberId, PartitionId};
        let mut partition = PartitionRecord::pending(
            JobName::new("backfill").unwrap(),
            PartitionId(3),
            IdRange::new(1, 100).unwrap(),
            Epoch(1),
        );
        partition.status = PartitionStatus::Failed;
        partition.quarantined = true;
        partition.error = Some("quarantined: 2 holders died".to_owned());
        partition.holder_deaths = ["w-1", "w-2"]
            .map(|id| HolderDeath {
                member: MemberRef {
                    id: MemberId::new(id).unwrap(),
                    incarnation: Incarnation(1),
                },
                at_unix_ms: 0,
                checkpoint: None,
            })
            .to_vec();
        let table = partitions_table(std::slice::from_ref(&partition));
        assert!(
            table.contains("quarantined: 2 holders died; died: w-1 ") && table.contains("w-2 "),
            "{table}"
        );
        let line = id_status(
            "backfill",
            5,
            &IdState::InPartition {
                partition: Box::new(partition),
            },
        );
        assert!(line.contains("holders died: w-1"), "{line}");
    }

    #[test]
    fn long_notes_are_cut() {
        assert_eq!(one_line("abc\ndef", 10), "abc");
        assert_eq!(one_line("abcdefghij", 5), "abcd…");
    }
}
