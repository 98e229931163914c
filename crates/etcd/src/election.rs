//! Leader election among cutover processes: a leader key held under an etcd lease.
//!
//! A candidate becomes leader by creating the key (a transaction that succeeds only while the
//! key does not exist) attached to a lease of its own, and stays leader while it renews the
//! lease. If it dies or loses etcd, the lease expires after its TTL, etcd deletes the key, and
//! another candidate's next attempt wins. The key's value is the leader's identity, which is what
//! a fenced store ([`crate::EtcdStore::fenced`]) compares on every write: a leader whose lease
//! expired can no longer commit, even before it notices.

use serde_json::json;

use crate::client::{b64, number, Client, EtcdError};

/// A candidate for the leadership of `key`.
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    key: String,
    identity: String,
    ttl_secs: i64,
}

/// The leadership a candidate won, held by renewing its lease.
#[derive(Debug)]
pub struct Leadership {
    client: Client,
    key: String,
    identity: String,
    lease: i64,
}

impl Election {
    /// A candidate `identity` for `key`, whose leadership lapses `ttl_secs` after its last renewal.
    pub fn new(client: Client, key: &str, identity: &str, ttl_secs: i64) -> Election {
        Election {
            client,
            key: key.to_string(),
            identity: identity.to_string(),
            ttl_secs: ttl_secs.max(1),
        }
    }

    /// One attempt: the leadership if the key was free, else `None`.
    pub fn try_acquire(&self) -> Result<Option<Leadership>, EtcdError> {
        let grant = self
            .client
            .call("/v3/lease/grant", json!({ "TTL": self.ttl_secs.to_string() }))?;
        let lease = number(grant.get("ID"));
        if lease == 0 {
            return Err(EtcdError::Refused(format!("no lease granted: {grant}")));
        }
        let won = self.client.txn(
            vec![json!({"key": b64(&self.key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})],
            vec![json!({"request_put": {"key": b64(&self.key), "value": b64(&self.identity), "lease": lease.to_string()}})],
        )?;
        if !won {
            // Not needed: let it go rather than wait for it to expire.
            let _ = self
                .client
                .call("/v3/lease/revoke", json!({ "ID": lease.to_string() }));
            return Ok(None);
        }
        Ok(Some(Leadership {
            client: self.client.clone(),
            key: self.key.clone(),
            identity: self.identity.clone(),
            lease,
        }))
    }

    /// The identity of the leader now, if there is one.
    pub fn leader(&self) -> Result<Option<String>, EtcdError> {
        Ok(self.client.get(&self.key)?.map(|(value, _)| value))
    }
}

impl Leadership {
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Renews the lease. `false` when the leadership is lost: the lease expired (etcd deleted the
    /// key), or the key holds another identity. Renew well within the TTL, e.g. every third of it.
    pub fn keep_alive(&self) -> Result<bool, EtcdError> {
        let answer = self
            .client
            .call("/v3/lease/keepalive", json!({ "ID": self.lease.to_string() }))?;
        let ttl = number(answer.pointer("/result/TTL"));
        if ttl <= 0 {
            return Ok(false);
        }
        Ok(self
            .client
            .get(&self.key)?
            .is_some_and(|(value, _)| value == self.identity))
    }

    /// Gives the leadership up at once (another candidate may take it on its next attempt).
    pub fn resign(self) -> Result<(), EtcdError> {
        match self
            .client
            .call("/v3/lease/revoke", json!({ "ID": self.lease.to_string() }))
        {
            Ok(_) => Ok(()),
            // Already expired: nothing held any more.
            Err(EtcdError::Refused(message)) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The lease the leader key is attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }
}
