//! `elkctl status`: members, role leaders with their epochs, the membership view and jobs.

use crate::connect::TargetArgs;
use elk_nats::{Resources, read_entry, watch_snapshot};
use elk_protocol::decode;
use elk_protocol::messages::{DesiredWorkers, JobRecord, MemberRecord, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, DESIRED_WORKERS_KEY, VIEW_KEY};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let resources = args.target.open().await?;
    print!("{}", render(&resources).await?);
    Ok(ExitCode::SUCCESS)
}

/// Renders the status report as text.
pub async fn render(resources: &Resources) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(out, "namespace {}", resources.names.namespace())?;

    let members = watch_snapshot(&resources.members).await?;
    writeln!(out, "\nMEMBERS ({})", members.entries.len())?;
    writeln!(
        out,
        "{:<24} {:<9} {:>8} {:>20}",
        "ID", "ROLE", "CAPACITY", "INCARNATION"
    )?;
    for (id, entry) in &members.entries {
        match decode::<MemberRecord>(&entry.value) {
            Ok(member) => writeln!(
                out,
                "{:<24} {:<9} {:>8} {:>20}",
                id,
                format!("{:?}", member.role).to_lowercase(),
                member.capacity,
                member.incarnation
            )?,
            Err(error) => writeln!(out, "{id:<24} <undecodable: {error}>")?,
        }
    }

    writeln!(out, "\nLEADERS")?;
    for role in ControlRole::ALL {
        let lease = read_entry(&resources.leases, role.lease_key()).await?;
        let text = match lease
            .filter(|e| !e.deleted)
            .map(|e| decode::<RoleLease>(&e.value))
        {
            Some(Ok(lease)) => match lease.holder {
                Some(holder) => format!("{} (epoch {})", holder.id, lease.epoch),
                None => format!("none (epoch {})", lease.epoch),
            },
            Some(Err(error)) => format!("<undecodable: {error}>"),
            None => "none".to_owned(),
        };
        writeln!(out, "{:<9} {text}", role.as_str())?;
    }
    let view = read_entry(&resources.leases, VIEW_KEY).await?;
    if let Some(Ok(view)) = view
        .filter(|e| !e.deleted)
        .map(|e| decode::<MembershipView>(&e.value))
    {
        writeln!(
            out,
            "view      generation {} ({} members)",
            view.generation,
            view.members.len()
        )?;
    }
    let desired = read_entry(&resources.fleet, DESIRED_WORKERS_KEY).await?;
    if let Some(Ok(desired)) = desired
        .filter(|e| !e.deleted)
        .map(|e| decode::<DesiredWorkers>(&e.value))
    {
        writeln!(
            out,
            "scaler    desired workers {} (live {}, backlog {} partitions)",
            desired.desired, desired.live_workers, desired.backlog_partitions
        )?;
    }

    let jobs = watch_snapshot(&resources.jobs).await?;
    writeln!(out, "\nJOBS ({})", jobs.entries.len())?;
    writeln!(
        out,
        "{:<20} {:<9} {:>14} {:>8} {:>21}",
        "NAME", "STATE", "PARTITIONS", "DONE", "IDS"
    )?;
    for (name, entry) in &jobs.entries {
        match decode::<JobRecord>(&entry.value) {
            Ok(job) => {
                let percent = 100.0 * job.ids_completed as f64 / job.ids_total().max(1) as f64;
                writeln!(
                    out,
                    "{:<20} {:<9} {:>14} {:>7.1}% {:>21}",
                    name,
                    format!("{:?}", job.state).to_lowercase(),
                    format!("{}/{}", job.partitions_completed, job.partitions_total),
                    percent,
                    format!("{}/{}", job.ids_completed, job.ids_total())
                )?
            }
            Err(error) => writeln!(out, "{name:<20} <undecodable: {error}>")?,
        }
    }
    Ok(out)
}
