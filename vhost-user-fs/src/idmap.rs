//! Ownership translation between guest and host IDs (`--translate-uid`, `--translate-gid`),
//! with virtiofsd's rule syntax, so that a guest's root need not be the host's root.
//!
//! Guest to host applies to every ID the guest sends (the caller that owns a new file, a
//! chown's target, POSIX ACL entries); an ID no rule covers passes unchanged, and one a
//! `forbid-guest` rule covers fails with EPERM. Host to guest applies to every ID the
//! backend returns; once any rule maps that way, a host ID no rule covers shows as the
//! overflow ID 65534 (`nobody`), as in a user namespace.

use std::fmt;
use std::str::FromStr;

/// What a host ID no host-to-guest rule covers shows as (the kernel's overflow ID).
pub const OVERFLOW_ID: u32 = 65534;

/// One `--translate-uid` / `--translate-gid` rule.
// Each variant's fields are the numbers of its syntax, named as in the variant's doc.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRule {
    /// `map:GUEST:HOST:COUNT`: both ways, one to one.
    Map { guest: u32, host: u32, count: u32 },
    /// `guest:GUEST:HOST:COUNT`: guest to host only, one to one.
    Guest { guest: u32, host: u32, count: u32 },
    /// `host:HOST:GUEST:COUNT`: host to guest only, one to one.
    Host { host: u32, guest: u32, count: u32 },
    /// `squash-guest:GUEST:COUNT:HOST`: `COUNT` guest IDs to the one host ID.
    SquashGuest { guest: u32, count: u32, host: u32 },
    /// `squash-host:HOST:COUNT:GUEST`: `COUNT` host IDs to the one guest ID.
    SquashHost { host: u32, count: u32, guest: u32 },
    /// `forbid-guest:GUEST:COUNT`: the guest may not use these IDs (EPERM).
    ForbidGuest { guest: u32, count: u32 },
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    /// Not `KIND:NUMBERS` with a known kind and the right number of decimal fields.
    #[error("expected map:GUEST:HOST:COUNT, guest:GUEST:HOST:COUNT, host:HOST:GUEST:COUNT, squash-guest:GUEST:COUNT:HOST, squash-host:HOST:COUNT:GUEST or forbid-guest:GUEST:COUNT")]
    Syntax,
    /// A count of 0, or a range past 2^32 - 1.
    #[error("the count must be at least 1 and the range end at or below 4294967295")]
    Range,
    /// Two rules cover the same ID in the same direction.
    #[error("{0} overlaps {1}")]
    Overlap(IdRule, IdRule),
}

impl FromStr for IdRule {
    type Err = IdMapError;

    fn from_str(s: &str) -> Result<IdRule, IdMapError> {
        let bad = || IdMapError::Syntax;
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let nums: Vec<u32> = rest
            .split(':')
            .map(|n| n.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let rule = match (kind, nums.as_slice()) {
            ("map", &[guest, host, count]) => IdRule::Map { guest, host, count },
            ("guest", &[guest, host, count]) => IdRule::Guest { guest, host, count },
            ("host", &[host, guest, count]) => IdRule::Host { host, guest, count },
            ("squash-guest", &[guest, count, host]) => IdRule::SquashGuest { guest, count, host },
            ("squash-host", &[host, count, guest]) => IdRule::SquashHost { host, count, guest },
            ("forbid-guest", &[guest, count]) => IdRule::ForbidGuest { guest, count },
            _ => return Err(bad()),
        };
        let fits = |base: u32, n: u32| n > 0 && u64::from(base) + u64::from(n) <= 1 << 32;
        // Both ends of a one-to-one rule, so that shifting an ID cannot overflow.
        let ok = match rule {
            IdRule::Map { guest, host, count }
            | IdRule::Guest { guest, host, count }
            | IdRule::Host { host, guest, count } => fits(guest, count) && fits(host, count),
            IdRule::SquashGuest {
                guest: base, count, ..
            }
            | IdRule::SquashHost {
                host: base, count, ..
            }
            | IdRule::ForbidGuest { guest: base, count } => fits(base, count),
        };
        if !ok {
            return Err(IdMapError::Range);
        }
        Ok(rule)
    }
}

impl fmt::Display for IdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdRule::Map { guest, host, count } => write!(f, "map:{guest}:{host}:{count}"),
            IdRule::Guest { guest, host, count } => write!(f, "guest:{guest}:{host}:{count}"),
            IdRule::Host { host, guest, count } => write!(f, "host:{host}:{guest}:{count}"),
            IdRule::SquashGuest { guest, count, host } => {
                write!(f, "squash-guest:{guest}:{count}:{host}")
            }
            IdRule::SquashHost { host, count, guest } => {
                write!(f, "squash-host:{host}:{count}:{guest}")
            }
            IdRule::ForbidGuest { guest, count } => write!(f, "forbid-guest:{guest}:{count}"),
        }
    }
}

/// Where IDs of one range go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    /// One to one, from this first ID.
    Shift(u32),
    /// All to this one ID.
    One(u32),
    /// Nowhere: EPERM.
    Forbid,
}

/// `count` IDs from `base` (`count` ≥ 1, the range within u32) and where they go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    base: u32,
    count: u32,
    dest: Dest,
}

impl Span {
    fn contains(&self, id: u32) -> bool {
        id >= self.base && u64::from(id - self.base) < u64::from(self.count)
    }

    fn overlaps(&self, o: &Span) -> bool {
        let end = |s: &Span| u64::from(s.base) + u64::from(s.count);
        u64::from(self.base) < end(o) && u64::from(o.base) < end(self)
    }

    fn apply(&self, id: u32) -> Option<u32> {
        match self.dest {
            Dest::Shift(to) => Some(to + (id - self.base)),
            Dest::One(to) => Some(to),
            Dest::Forbid => None,
        }
    }
}

impl IdRule {
    /// The guest IDs this rule translates to the host, if it does.
    fn guest_side(&self) -> Option<Span> {
        let (base, count, dest) = match *self {
            IdRule::Map { guest, host, count } | IdRule::Guest { guest, host, count } => {
                (guest, count, Dest::Shift(host))
            }
            IdRule::SquashGuest { guest, count, host } => (guest, count, Dest::One(host)),
            IdRule::ForbidGuest { guest, count } => (guest, count, Dest::Forbid),
            IdRule::Host { .. } | IdRule::SquashHost { .. } => return None,
        };
        Some(Span { base, count, dest })
    }

    /// The host IDs this rule translates to the guest, if it does.
    fn host_side(&self) -> Option<Span> {
        let (base, count, dest) = match *self {
            IdRule::Map { guest, host, count } | IdRule::Host { host, guest, count } => {
                (host, count, Dest::Shift(guest))
            }
            IdRule::SquashHost { host, count, guest } => (host, count, Dest::One(guest)),
            IdRule::Guest { .. } | IdRule::SquashGuest { .. } | IdRule::ForbidGuest { .. } => {
                return None
            }
        };
        Some(Span { base, count, dest })
    }
}

/// The rules of one kind of ID (user or group), both ways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    to_host: Vec<(Span, IdRule)>,
    to_guest: Vec<(Span, IdRule)>,
}

impl IdMap {
    /// The map `rules` make; rules covering the same ID in the same direction are refused.
    pub fn new(rules: &[IdRule]) -> Result<IdMap, IdMapError> {
        let mut map = IdMap::default();
        for rule in rules {
            let sides = [
                (rule.guest_side(), &mut map.to_host),
                (rule.host_side(), &mut map.to_guest),
            ];
            for (span, table) in sides {
                let Some(span) = span else { continue };
                if let Some((_, other)) = table.iter().find(|(s, _)| s.overlaps(&span)) {
                    return Err(IdMapError::Overlap(*rule, *other));
                }
                table.push((span, *rule));
            }
        }
        Ok(map)
    }

    /// Whether no rule changes any ID.
    pub fn is_identity(&self) -> bool {
        self.to_host.is_empty() && self.to_guest.is_empty()
    }

    /// The host ID for the guest's `id`; `None` when a `forbid-guest` rule covers it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        match self.to_host.iter().find(|(s, _)| s.contains(id)) {
            Some((s, _)) => s.apply(id),
            None => Some(id),
        }
    }

    /// The guest ID for the host's `id`: [`OVERFLOW_ID`] when host-to-guest rules exist
    /// and none covers it.
    pub fn to_guest(&self, id: u32) -> u32 {
        if self.to_guest.is_empty() {
            return id;
        }
        self.to_guest
            .iter()
            .find(|(s, _)| s.contains(id))
            .and_then(|(s, _)| s.apply(id))
            .unwrap_or(OVERFLOW_ID)
    }
}

/// User and group maps together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMaps {
    /// `--translate-uid`.
    pub uids: IdMap,
    /// `--translate-gid`.
    pub gids: IdMap,
}

/// POSIX ACL xattr layout (`system.posix_acl_access`, `..._default`): a 4-byte version,
/// then 8-byte entries of tag (u16), permissions (u16) and ID (u32), little-endian.
const ACL_HEADER: usize = 4;
const ACL_ENTRY: usize = 8;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Whether `name` is an xattr holding a POSIX ACL, whose entries carry IDs.
pub fn is_acl_xattr(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

impl IdMaps {
    /// Whether no rule changes any ID.
    pub fn is_identity(&self) -> bool {
        self.uids.is_identity() && self.gids.is_identity()
    }

    /// A POSIX ACL value with its user and group entries' IDs passed through `f` (the map
    /// for the entry's kind and the ID); `None` from `f` refuses the whole value. A value
    /// that is not a whole number of entries is left to the host kernel to refuse.
    fn rewrite_acl(&self, value: &[u8], f: impl Fn(&IdMap, u32) -> Option<u32>) -> Option<Vec<u8>> {
        let mut out = value.to_vec();
        if out.len() < ACL_HEADER || (out.len() - ACL_HEADER) % ACL_ENTRY != 0 {
            return Some(out);
        }
        for e in out[ACL_HEADER..].chunks_exact_mut(ACL_ENTRY) {
            let map = match u16::from_le_bytes([e[0], e[1]]) {
                ACL_USER => &self.uids,
                ACL_GROUP => &self.gids,
                _ => continue,
            };
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            e[4..].copy_from_slice(&f(map, id)?.to_le_bytes());
        }
        Some(out)
    }

    /// A guest's POSIX ACL value with host IDs; `None` when it names a forbidden ID.
    pub fn acl_to_host(&self, value: &[u8]) -> Option<Vec<u8>> {
        self.rewrite_acl(value, IdMap::to_host)
    }

    /// A host POSIX ACL value with guest IDs.
    pub fn acl_to_guest(&self, value: &[u8]) -> Vec<u8> {
        self.rewrite_acl(value, |m, id| Some(m.to_guest(id)))
            .unwrap_or_else(|| value.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> IdRule {
        s.parse().unwrap()
    }

    fn map(rules: &[&str]) -> IdMap {
        IdMap::new(&rules.iter().map(|r| rule(r)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn rules_parse_and_print_back() {
        for s in [
            "map:0:100000:65536",
            "guest:1000:2000:1",
            "host:2000:1000:1",
            "squash-guest:0:65536:1000",
            "squash-host:0:4294967295:65534",
            "forbid-guest:1:4294967295",
        ] {
            assert_eq!(rule(s).to_string(), s);
        }
        assert_eq!(
            rule("squash-guest:0:10:7"),
            IdRule::SquashGuest {
                guest: 0,
                count: 10,
                host: 7
            }
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        for s in [
            "",
            "map",
            "map:0:1",
            "map:0:1:2:3",
            "map:-1:0:1",
            "map:a:0:1",
            "map:0x10:0:1",
            "map: 1:0:1",
            "squash:0:1:2",
            "forbid-guest:0",
            "map:0:4294967296:1",
            "forbid-guest:1:4294967296",
        ] {
            assert_eq!(s.parse::<IdRule>(), Err(IdMapError::Syntax), "{s:?}");
        }
        for s in [
            "map:0:0:0",
            "squash-guest:0:0:5",
            "map:4294967295:0:2",
            "map:0:4294967295:2",
            "squash-host:4294967295:2:0",
            "guest:0:4294967295:2",
            "host:4294967295:0:2",
            "forbid-guest:2:4294967295",
        ] {
            assert_eq!(s.parse::<IdRule>(), Err(IdMapError::Range), "{s}");
        }
        assert!(matches!(
            "forbid-guest:1:4294967295".parse::<IdRule>(),
            Ok(IdRule::ForbidGuest { .. })
        ));
        assert!(matches!(
            "map:4294967295:0:1".parse::<IdRule>(),
            Ok(IdRule::Map { .. })
        ));
    }

    #[test]
    fn overlapping_rules_in_one_direction_are_refused() {
        let try_map =
            |rules: &[&str]| IdMap::new(&rules.iter().map(|r| rule(r)).collect::<Vec<_>>());
        let e = try_map(&["map:0:100000:1000", "forbid-guest:999:5"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "forbid-guest:999:5 overlaps map:0:100000:1000"
        );
        assert!(try_map(&["map:0:100000:10", "squash-host:100009:1:0"]).is_err());
        // Same IDs, different directions: fine.
        try_map(&["squash-guest:0:10:100000", "squash-host:100000:10:0"]).unwrap();
        try_map(&["map:0:100000:10", "forbid-guest:10:4294967286"]).unwrap();
    }

    #[test]
    fn map_shifts_both_ways_and_the_rest_is_nobody_on_the_way_out() {
        let m = map(&["map:0:100000:65536"]);
        assert_eq!(m.to_host(0), Some(100000));
        assert_eq!(m.to_host(65535), Some(165535));
        assert_eq!(m.to_host(65536), Some(65536), "no rule: unchanged");
        assert_eq!(m.to_guest(100005), 5);
        assert_eq!(m.to_guest(165535), 65535);
        assert_eq!(m.to_guest(0), OVERFLOW_ID);
        assert_eq!(m.to_guest(165536), OVERFLOW_ID);
        assert_eq!(m.to_guest(99999), OVERFLOW_ID);
    }

    #[test]
    fn no_rules_change_nothing() {
        let m = IdMap::default();
        assert!(m.is_identity());
        for id in [0, 1000, u32::MAX] {
            assert_eq!(m.to_host(id), Some(id));
            assert_eq!(m.to_guest(id), id);
        }
    }

    #[test]
    fn squash_forbid_and_one_way_rules() {
        let m = map(&[
            "squash-guest:0:1000:5000",
            "forbid-guest:1000:1",
            "guest:2000:7000:10",
            "host:5000:0:1",
        ]);
        assert_eq!(m.to_host(0), Some(5000));
        assert_eq!(m.to_host(999), Some(5000));
        assert_eq!(m.to_host(1000), None);
        assert_eq!(m.to_host(1001), Some(1001));
        assert_eq!(m.to_host(2003), Some(7003));
        assert_eq!(m.to_guest(5000), 0);
        assert_eq!(m.to_guest(7003), OVERFLOW_ID, "guest: is one way");
        let top = map(&["forbid-guest:4294967295:1", "squash-host:0:4294967295:9"]);
        assert_eq!(top.to_host(u32::MAX), None);
        assert_eq!(top.to_guest(u32::MAX - 1), 9);
        assert_eq!(top.to_guest(u32::MAX), OVERFLOW_ID);
    }

    #[test]
    fn acl_entries_are_translated() {
        let maps = IdMaps {
            uids: map(&["map:0:100000:65536", "forbid-guest:70000:1"]),
            gids: map(&["map:0:200000:65536"]),
        };
        let acl = |entries: &[(u16, u32)]| {
            let mut v = 2u32.to_le_bytes().to_vec();
            for (tag, id) in entries {
                v.extend_from_slice(&tag.to_le_bytes());
                v.extend_from_slice(&7u16.to_le_bytes());
                v.extend_from_slice(&id.to_le_bytes());
            }
            v
        };
        const USER_OBJ: u16 = 0x01;
        let guest = acl(&[(USER_OBJ, u32::MAX), (ACL_USER, 5), (ACL_GROUP, 6)]);
        let host = acl(&[
            (USER_OBJ, u32::MAX),
            (ACL_USER, 100005),
            (ACL_GROUP, 200006),
        ]);
        assert_eq!(maps.acl_to_host(&guest), Some(host.clone()));
        assert_eq!(maps.acl_to_guest(&host), guest);
        assert_eq!(maps.acl_to_host(&acl(&[(ACL_USER, 70000)])), None);
        assert_eq!(
            maps.acl_to_guest(&acl(&[(ACL_USER, 0)])),
            acl(&[(ACL_USER, OVERFLOW_ID)])
        );
        assert_eq!(maps.acl_to_host(b"abc"), Some(b"abc".to_vec()));
    }
}
