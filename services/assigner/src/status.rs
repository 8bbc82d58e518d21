//! The live status of a namespace for the HTTP API (`http.rs`): the status page itself
//! (`status_page.html`, self-contained) and the two JSON routes it needs besides the admin
//! commands — `GET /v1/workers` (live workers with their grants, capacity and state) and
//! `GET /v1/roles` (role leaders with their epochs, the view generation).
//!
//! Both are read from KV by whichever replica serves the request — the membership view, the
//! assignment records and the role leases, all readable by an assigner — so they answer without
//! an assigner leader too (when the page most needs to say that there is none).

use elk_nats::{NatsError, Resources, read_entry, watch_snapshot};
use elk_protocol::decode;
use elk_protocol::messages::{AssignmentRecord, MembershipView, RoleLease};
use elk_protocol::names::{ControlRole, VIEW_KEY};
use serde::Serialize;

/// The status page (HTML with its script and style inline).
pub(crate) const STATUS_PAGE: &str = include_str!("status_page.html");

/// The page's Content-Security-Policy: nothing but itself and this origin's API.
pub(crate) const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WorkersView {
    pub namespace: String,
    /// Generation of the membership view the workers come from (`None`: no view yet).
    pub view_generation: Option<u64>,
    pub workers: Vec<WorkerView>,
}

/// One live worker (a worker member of the current view).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WorkerView {
    pub id: String,
    /// As a string: incarnations are nanosecond timestamps, beyond a JSON number's exact range.
    pub incarnation: String,
    pub capacity: u32,
    /// Jobs it declared (empty: every job).
    pub jobs: Vec<String>,
    /// Partitions its assignment record grants it (running plus queued on the worker).
    pub grants: u64,
    /// Of `grants`, those beyond its capacity: they wait on the worker for a free slot.
    pub queued: u64,
    /// Share of its processing slots its grants fill: `min(grants, capacity) / capacity`.
    pub load: f64,
    /// `active`; `draining` (shutting down: granted nothing new); `waiting` (no assignment record
    /// for this incarnation yet).
    pub state: &'static str,
}

/// `GET /v1/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RolesView {
    pub view_generation: Option<u64>,
    pub roles: Vec<RoleView>,
}

/// One control-plane role's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RoleView {
    pub role: &'static str,
    /// The leader's member id (`None`: nobody can take the role, or no lease yet).
    pub holder: Option<String>,
    pub holder_incarnation: Option<String>,
    /// Grows with every change of holder (0: no lease yet).
    pub epoch: u64,
    /// View generation at which the holder was designated.
    pub generation: Option<u64>,
}

/// The membership view, if one is stored and decodable.
async fn read_view(resources: &Resources) -> Result<Option<MembershipView>, NatsError> {
    let entry = read_entry(&resources.leases, VIEW_KEY).await?;
    Ok(entry
        .filter(|entry| !entry.deleted)
        .and_then(|entry| decode::<MembershipView>(&entry.value).ok()))
}

/// The live workers of the view with their assignment records.
pub(crate) async fn read_workers(resources: &Resources) -> Result<WorkersView, NatsError> {
    let view = read_view(resources).await?;
    let records = watch_snapshot(&resources.assignments).await?.entries;
    let workers = view
        .iter()
        .flat_map(MembershipView::workers)
        .map(|member| {
            let record = records
                .get(member.id.as_str())
                .filter(|entry| !entry.deleted)
                .and_then(|entry| decode::<AssignmentRecord>(&entry.value).ok())
                .filter(|record| record.incarnation == member.incarnation);
            let grants = record
                .as_ref()
                .map_or(0, |record| record.grants.len() as u64);
            let state = match &record {
                None => "waiting",
                Some(record) if record.drain => "draining",
                Some(_) => "active",
            };
            let capacity = member.capacity.get();
            let busy = grants.min(u64::from(capacity));
            WorkerView {
                id: member.id.to_string(),
                incarnation: member.incarnation.to_string(),
                capacity,
                jobs: member.jobs.iter().map(ToString::to_string).collect(),
                grants,
                queued: grants - busy,
                load: busy as f64 / f64::from(capacity.max(1)),
                state,
            }
        })
        .collect();
    Ok(WorkersView {
        namespace: resources.names.namespace().to_string(),
        view_generation: view.as_ref().map(|view| view.generation.get()),
        workers,
    })
}

/// Every control-plane role's lease, and the view generation.
pub(crate) async fn read_roles(resources: &Resources) -> Result<RolesView, NatsError> {
    let view = read_view(resources).await?;
    let mut roles = Vec::new();
    for role in ControlRole::ALL {
        let lease = read_entry(&resources.leases, role.lease_key())
            .await?
            .filter(|entry| !entry.deleted)
            .and_then(|entry| decode::<RoleLease>(&entry.value).ok());
        roles.push(match lease {
            Some(lease) => RoleView {
                role: role.as_str(),
                holder: lease.holder.as_ref().map(|holder| holder.id.to_string()),
                holder_incarnation: lease.holder.map(|holder| holder.incarnation.to_string()),
                epoch: lease.epoch.get(),
                generation: Some(lease.generation.get()),
            },
            None => RoleView {
                role: role.as_str(),
                holder: None,
                holder_incarnation: None,
                epoch: 0,
                generation: None,
            },
        });
    }
    Ok(RolesView {
        view_generation: view.map(|view| view.generation.get()),
        roles,
    })
}
