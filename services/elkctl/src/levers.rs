//! The operator's levers: `members` (every live member with role, capacity, load and state),
//! `drain` / `undrain` a worker, `freeze` / `unfreeze` placement (assigner leader), and
//! `transfer` a role's leadership (active election replica). See `docs/admin-api.md` §1.1.

use crate::admin::ask;
use crate::connect::ConnectArgs;
use crate::render::Table;
use anyhow::{Context, bail};
use elk_protocol::admin::{AdminCommand, AdminResult, MemberState, MemberStatus};
use elk_protocol::messages::{DrainSource, MemberRole, PlacementControl};
use elk_protocol::names::ControlRole;
use elk_types::MemberId;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The worker's member id.
    pub worker: MemberId,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FreezeArgs {
    /// Why placement is frozen (shown by `members` and stored with the freeze).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UnfreezeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TransferArgs {
    /// The role whose leadership moves: `assigner` or `scaler`.
    #[arg(value_parser = parse_role)]
    pub role: ControlRole,
    /// The member to hand it to (default: the next live member of that role).
    #[arg(long)]
    pub to: Option<MemberId>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_role(name: &str) -> anyhow::Result<ControlRole> {
    ControlRole::parse(name).with_context(|| format!("unknown role '{name}' (assigner or scaler)"))
}

pub async fn run_members(args: MembersArgs) -> anyhow::Result<ExitCode> {
    let Some(result) = ask(&args.connect, AdminCommand::Members).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Members {
        frozen, members, ..
    } = result
    else {
        bail!("unexpected assigner reply: {result:?}");
    };
    print!("{}", members_table(&members));
    if frozen {
        println!("placement is frozen (`elkctl unfreeze` resumes rebalancing)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_drain(args: WorkerArgs, drain: bool) -> anyhow::Result<ExitCode> {
    let command = if drain {
        AdminCommand::Drain {
            worker: args.worker.clone(),
            source: DrainSource::Operator,
        }
    } else {
        AdminCommand::Undrain {
            worker: args.worker.clone(),
        }
    };
    let Some(result) = ask(&args.connect, command).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Member { member } = result else {
        bail!("unexpected assigner reply: {result:?}");
    };
    println!(
        "worker {} {} ({} granted, {} being handed back)",
        member.id,
        state_name(member.state),
        member.granted,
        member.revoking
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run_freeze(connect: &ConnectArgs, command: AdminCommand) -> anyhow::Result<ExitCode> {
    let Some(result) = ask(connect, command).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Placement { placement } = result else {
        bail!("unexpected assigner reply: {result:?}");
    };
    println!("{}", placement_line(&placement));
    Ok(ExitCode::SUCCESS)
}

pub async fn run_transfer(args: TransferArgs) -> anyhow::Result<ExitCode> {
    let command = AdminCommand::Transfer {
        role: args.role,
        to: args.to.clone(),
    };
    let Some(result) = ask(&args.connect, command).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let AdminResult::Transferred { transfer } = result else {
        bail!("unexpected election reply: {result:?}");
    };
    let previous = transfer
        .previous
        .as_ref()
        .map_or("nobody".to_owned(), |holder| holder.id.to_string());
    println!(
        "{} leadership: {previous} -> {} (epoch {})",
        transfer.role.as_str(),
        transfer.holder.id,
        transfer.epoch
    );
    Ok(ExitCode::SUCCESS)
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Active => "active",
        MemberState::Draining => "draining",
        MemberState::Drained => "drained",
        MemberState::Leaving => "leaving",
        MemberState::Service => "service",
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Worker => "worker",
        MemberRole::Election => "election",
        MemberRole::Assigner => "assigner",
        MemberRole::Scaler => "scaler",
    }
}

/// One row per member: id, role, capacity, load (granted / slots), revoking, state (with who
/// asked for a drain), IDs progressed this assigner term.
pub fn members_table(members: &[MemberStatus]) -> String {
    let mut table = Table::new(&[
        "ID",
        "ROLE",
        ">CAPACITY",
        ">GRANTED",
        ">REVOKING",
        "STATE",
        ">IDS DONE",
    ]);
    for member in members {
        let state = match member.drain {
            Some(DrainSource::Operator) => format!("{} (operator)", state_name(member.state)),
            Some(DrainSource::Scaler) => format!("{} (scaler)", state_name(member.state)),
            None => state_name(member.state).to_owned(),
        };
        table.row(vec![
            member.id.to_string(),
            role_name(member.role).to_owned(),
            member.capacity.get().to_string(),
            member.granted.to_string(),
            member.revoking.to_string(),
            state,
            member.ids_progressed.to_string(),
        ]);
    }
    table.render()
}

fn placement_line(placement: &PlacementControl) -> String {
    match &placement.frozen {
        Some(freeze) => match &freeze.reason {
            Some(reason) => format!("placement frozen: {reason}"),
            None => "placement frozen".to_owned(),
        },
        None => "placement unfrozen: rebalancing resumes".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_types::{Capacity, Incarnation};

    #[test]
    fn roles_parse_and_unknown_ones_are_refused() {
        assert_eq!(parse_role("scaler").unwrap(), ControlRole::Scaler);
        let refused = parse_role("worker").unwrap_err().to_string();
        assert!(refused.contains("assigner or scaler"), "{refused}");
    }

    #[test]
    fn the_members_table_shows_load_and_who_drains() {
        let member = MemberStatus {
            id: MemberId::new("w-1").unwrap(),
            role: MemberRole::Worker,
            incarnation: Incarnation(3),
            capacity: Capacity(4),
            jobs: Vec::new(),
            granted: 2,
            revoking: 1,
            state: MemberState::Draining,
            drain: Some(DrainSource::Scaler),
            ids_progressed: 1_500,
        };
        let table = members_table(&[member]);
        let row = table.lines().nth(1).unwrap();
        for cell in ["w-1", "worker", "4", "2", "1", "draining (scaler)", "1500"] {
            assert!(row.contains(cell), "{row}");
        }
    }
}
