//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: the holder renews before `leaseDurationSeconds` runs out; a
//! candidate takes over only an expired lease; every write carries the
//! `resourceVersion` it read, so two candidates cannot both win (the API
//! server answers the loser 409). Time is passed in.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

pub const LEASE_NAME: &str = "meshtune-agent-leader";

pub struct LeaderElector {
    api: Api<Lease>,
    identity: String,
    duration_s: i32,
    leader: bool,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, identity: &str, duration_s: i32) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
            duration_s,
            leader: false,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_s),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Acquires or renews the lease; returns whether this agent leads now.
    /// Any failure means not leading: writing stops at once.
    pub async fn tick(&mut self, now: Timestamp) -> bool {
        self.leader = match self.try_tick(now).await {
            Ok(l) => l,
            Err(e) => {
                if self.leader {
                    tracing::warn!("lost the leader lease: {e}");
                }
                false
            }
        };
        self.leader
    }

    async fn try_tick(&mut self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = match self.api.get(LEASE_NAME).await {
            Ok(l) => l,
            Err(e) if is_status(&e, 404) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_status(&e, 409) => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = if holder == self.identity {
            let acquired = spec.acquire_time.map(|t| t.0).unwrap_or(now);
            self.spec(now, acquired, transitions)
        } else {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(self.duration_s));
            let renewed = spec.renew_time.map(|t| t.0.as_second()).unwrap_or(0);
            if !holder.is_empty() && renewed + duration > now.as_second() {
                return Ok(false);
            }
            self.spec(now, now, transitions + 1)
        };
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(next),
        };
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
