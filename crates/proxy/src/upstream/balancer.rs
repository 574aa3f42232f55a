//! Endpoint selection: weighted round robin, least-request (power of two choices over
//! peak-EWMA cost) and consistent hashing on a ring.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gatehouse_config::{HashOn, LoadBalancing};

use super::endpoint::{now_ms, Endpoint};

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 160;

/// The endpoints of a service at one moment, with what each policy precomputes.
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Interleaved weighted order for round robin (indices into `endpoints`).
    schedule: Vec<u32>,
    /// (hash, endpoint index), sorted by hash.
    ring: Vec<(u64, u32)>,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, policy: &LoadBalancing) -> Self {
        // Consistent hashing falls back to round robin for requests without a hash key.
        let schedule = match policy {
            LoadBalancing::RoundRobin | LoadBalancing::ConsistentHash(_) => {
                weighted_schedule(&endpoints)
            }
            LoadBalancing::LeastRequest => Vec::new(),
        };
        let ring = match policy {
            LoadBalancing::ConsistentHash(_) => build_ring(&endpoints),
            _ => Vec::new(),
        };
        Self {
            endpoints,
            schedule,
            ring,
        }
    }
}

/// Smooth weighted round robin (as nginx does it), unrolled once into a fixed schedule so the
/// request path needs only an atomic counter.
fn weighted_schedule(endpoints: &[Arc<Endpoint>]) -> Vec<u32> {
    let total: i64 = endpoints.iter().map(|e| i64::from(e.weight)).sum();
    let mut current = vec![0i64; endpoints.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, endpoint) in endpoints.iter().enumerate() {
            current[i] += i64::from(endpoint.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        for point in 0..endpoint.weight * RING_POINTS_PER_WEIGHT {
            ring.push((hash_of(&(endpoint.addr, point)), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// A fixed-key hash: the same key maps to the same endpoint on every gateway of a fleet.
pub fn hash_of(value: &impl Hash) -> u64 {
    std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(value)
}

/// The balancing policy with its per-service state.
pub struct Balancer {
    policy: LoadBalancing,
    cursor: AtomicUsize,
}

impl Balancer {
    pub fn new(policy: LoadBalancing) -> Self {
        Self {
            policy,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> &LoadBalancing {
        &self.policy
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        match &self.policy {
            LoadBalancing::ConsistentHash(on) => Some(on),
            _ => None,
        }
    }

    /// Choose an available endpoint; `avoid` (a previous attempt) is skipped when another
    /// endpoint is available. `hash_key` is used by consistent hashing.
    pub fn pick(
        &self,
        set: &EndpointSet,
        hash_key: Option<u64>,
        avoid: Option<&Endpoint>,
    ) -> Option<Arc<Endpoint>> {
        let now = now_ms();
        let usable =
            |e: &Endpoint| e.is_available(now) && !avoid.is_some_and(|a| std::ptr::eq(a, e));
        let chosen = match &self.policy {
            LoadBalancing::RoundRobin => self.round_robin(set, &usable, avoid.is_some()),
            LoadBalancing::LeastRequest => least_request(set, &usable),
            LoadBalancing::ConsistentHash(_) => match hash_key {
                Some(key) => ring_lookup(set, key, &usable),
                None => self.round_robin(set, &usable, avoid.is_some()),
            },
        };
        // A retry may go back to the endpoint it avoided if nothing else is left.
        chosen.or_else(|| avoid.and_then(|_| self.pick(set, hash_key, None)))
    }

    /// `retry`: a retry takes the next endpoint without advancing the shared cursor, so
    /// retries do not shift first attempts onto the endpoint that just failed.
    fn round_robin(
        &self,
        set: &EndpointSet,
        usable: &dyn Fn(&Endpoint) -> bool,
        retry: bool,
    ) -> Option<Arc<Endpoint>> {
        let len = set.schedule.len();
        if len == 0 {
            return None;
        }
        let start = if retry {
            self.cursor.load(Ordering::Relaxed)
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed)
        };
        (0..len)
            .map(|step| &set.endpoints[set.schedule[(start + step) % len] as usize])
            .find(|e| usable(e))
            .cloned()
    }
}

fn least_request(set: &EndpointSet, usable: &dyn Fn(&Endpoint) -> bool) -> Option<Arc<Endpoint>> {
    let endpoints = &set.endpoints;
    match endpoints.len() {
        0 => return None,
        1 => return endpoints.iter().find(|e| usable(e)).cloned(),
        _ => {}
    }
    let a = fastrand::usize(..endpoints.len());
    let mut b = fastrand::usize(..endpoints.len() - 1);
    if b >= a {
        b += 1;
    }
    let (ea, eb) = (&endpoints[a], &endpoints[b]);
    match (usable(ea), usable(eb)) {
        (true, true) => Some(if ea.cost() <= eb.cost() { ea } else { eb }.clone()),
        (true, false) => Some(ea.clone()),
        (false, true) => Some(eb.clone()),
        // Both drawn endpoints are out: take the cheapest usable one, if any.
        (false, false) => endpoints
            .iter()
            .filter(|e| usable(e))
            .min_by(|x, y| x.cost().total_cmp(&y.cost()))
            .cloned(),
    }
}

fn ring_lookup(
    set: &EndpointSet,
    key: u64,
    usable: &dyn Fn(&Endpoint) -> bool,
) -> Option<Arc<Endpoint>> {
    let ring = &set.ring;
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|(hash, _)| *hash < key);
    (0..ring.len())
        .map(|step| &set.endpoints[ring[(start + step) % ring.len()].1 as usize])
        .find(|e| usable(e))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Endpoint::new(
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    *w,
                ))
            })
            .collect()
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        let set = EndpointSet::new(endpoints(&[5, 1, 1]), &LoadBalancing::RoundRobin);
        assert_eq!(set.schedule, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ring_is_stable_when_an_unrelated_endpoint_goes_away() {
        let all = endpoints(&[1, 1, 1, 1]);
        let policy = LoadBalancing::ConsistentHash(HashOn::Path);
        let full = EndpointSet::new(all.clone(), &policy);
        let fewer = EndpointSet::new(all[..3].to_vec(), &policy);
        let balancer = Balancer::new(policy);
        let mut moved = 0;
        for key in 0..1000u64 {
            let key = hash_of(&key);
            let a = balancer.pick(&full, Some(key), None).unwrap();
            let b = balancer.pick(&fewer, Some(key), None).unwrap();
            if a.addr != b.addr {
                assert_eq!(
                    a.addr, all[3].addr,
                    "only keys of the removed endpoint may move"
                );
                moved += 1;
            }
        }
        assert!(
            (150..350).contains(&moved),
            "about a quarter should move, got {moved}"
        );
    }
}
