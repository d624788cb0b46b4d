//! The suspicious-activity detectors' judgement: pure functions of their
//! thresholds ([`Detectors`]) and of the counts one call's store call
//! returned. The driver counts and reports; what is suspicious, and what
//! to block for it, is decided here.

use crate::events::Suspicion;
use crate::limits::{BlockTarget, Detectors};

/// One suspicion, and the block it calls for when automatic blocks are on.
pub(crate) type Finding = (Suspicion, Option<BlockTarget>);

/// Whether one IP asking for `subjects` distinct identifiers in the window
/// is suspicious: above the threshold, not at it.
pub(crate) fn too_many_subjects(d: &Detectors, subjects: u64) -> bool {
    subjects > u64::from(d.subjects_per_ip)
}

/// The finding about an IP (`ip`, as blocks name it) that asked for
/// `subjects` identifiers: the IP is what an automatic block stops.
pub(crate) fn subjects_from_ip(d: &Detectors, ip: &str, subjects: u64) -> Finding {
    let block = d.auto_block.map(|_| BlockTarget::Ip(ip.to_owned()));
    (Suspicion::ManySubjectsFromOneIp { subjects }, block)
}

/// Whether `sends` codes into one target, `verified` of them verified,
/// look pumped: judged at every `min` sends (so a pumped target is
/// reported periodically rather than on every send), when fewer than
/// `pumping_max_verified_percent` of them verified.
pub(crate) fn pumped(d: &Detectors, sends: u64, verified: u64, min: u32) -> bool {
    let min = u64::from(min);
    min > 0
        && sends >= min
        && sends.is_multiple_of(min)
        && u128::from(verified) * 100 < u128::from(sends) * u128::from(d.pumping_max_verified_percent)
}

/// The pumping findings of one admitted send: `country` and `block` (the
/// number block's pseudonym) with their `[sends, verified]` counts in the
/// window. A country is blocked only where country blocks are enabled.
pub(crate) fn pumping(d: &Detectors, country: (u16, [u64; 2]), block: (&str, [u64; 2])) -> Vec<Finding> {
    let mut found = Vec::new();
    let (country_code, [sends, verified]) = country;
    if pumped(d, sends, verified, d.pumping_min_sends_country) {
        let target = (d.auto_block.is_some() && d.auto_block_countries)
            .then_some(BlockTarget::CountryCode(country_code));
        let s = Suspicion::SmsPumpingCountry {
            country_code,
            sends,
            verified,
        };
        found.push((s, target));
    }
    let (block, [sends, verified]) = block;
    if pumped(d, sends, verified, d.pumping_min_sends_block) {
        let target = d.auto_block.map(|_| BlockTarget::NumberBlock(block.to_owned()));
        let s = Suspicion::SmsPumpingNumberBlock {
            block: block.to_owned(),
            sends,
            verified,
        };
        found.push((s, target));
    }
    found
}

/// The finding about an account locked out `lockouts` times this week, if
/// that is as often as the threshold (it is reported, never blocked: the
/// account's owner is the likely victim).
pub(crate) fn repeated_lockouts(d: &Detectors, lockouts: u64) -> Option<Suspicion> {
    (lockouts >= u64::from(d.lockouts_per_week)).then_some(Suspicion::RepeatedLockouts { lockouts })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn blocking(countries: bool) -> Detectors {
        Detectors::default()
            .with_auto_block(Some(Duration::from_secs(600)))
            .with_auto_block_countries(countries)
    }

    #[test]
    fn an_ip_is_suspicious_above_its_threshold_not_at_it() {
        let d = Detectors::default().with_subjects_per_ip(10);
        assert!(!too_many_subjects(&d, 10));
        assert!(too_many_subjects(&d, 11));
        assert_eq!(
            subjects_from_ip(&d, "198.51.100.7", 11).1,
            None,
            "report only by default"
        );
        let (_, block) = subjects_from_ip(&blocking(false), "198.51.100.7", 11);
        assert_eq!(block, Some(BlockTarget::Ip("198.51.100.7".to_owned())));
    }

    #[test]
    fn pumping_is_judged_at_every_min_sends_below_the_verified_share() {
        // 10%: of 30 sends, 2 verified is pumped, 3 is not.
        let d = Detectors::default().with_pumping_max_verified_percent(10);
        assert!(!pumped(&d, 29, 0, 30), "below the minimum");
        assert!(pumped(&d, 30, 2, 30));
        assert!(!pumped(&d, 30, 3, 30), "at the share, not below it");
        assert!(!pumped(&d, 31, 0, 30), "judged at multiples of the minimum only");
        assert!(pumped(&d, 60, 5, 30));
        assert!(!pumped(&d, 0, 0, 0), "a minimum of zero judges nothing");
        // Exact at any count: no product overflows or saturates.
        assert!(pumped(&d, u64::MAX / 3 * 3, 0, 3));
        assert!(!pumped(&d, u64::MAX / 3 * 3, u64::MAX / 3 * 3 / 10 + 1, 3));
    }

    #[test]
    fn a_country_is_blocked_only_where_country_blocks_are_on() {
        let counts = ((44, [30, 0]), ("nb-pseudonym", [10, 0]));
        let targets = |d: &Detectors| -> Vec<Option<BlockTarget>> {
            pumping(d, counts.0, counts.1)
                .into_iter()
                .map(|(_, t)| t)
                .collect()
        };
        assert_eq!(
            targets(&Detectors::default()),
            [None, None],
            "report only by default"
        );
        assert_eq!(
            targets(&blocking(false)),
            [None, Some(BlockTarget::NumberBlock("nb-pseudonym".to_owned()))]
        );
        assert_eq!(
            targets(&blocking(true)),
            [
                Some(BlockTarget::CountryCode(44)),
                Some(BlockTarget::NumberBlock("nb-pseudonym".to_owned()))
            ]
        );
    }

    #[test]
    fn repeated_lockouts_are_reported_from_the_threshold() {
        let d = Detectors::default().with_lockouts_per_week(3);
        assert_eq!(repeated_lockouts(&d, 2), None);
        assert_eq!(
            repeated_lockouts(&d, 3),
            Some(Suspicion::RepeatedLockouts { lockouts: 3 })
        );
    }
}
