//! Times read from the bucket, checked against the local clock.
//!
//! Two times come from the bucket: each object's `LastModified` (the object
//! store's clock), which the settle window compares with, and each log
//! object's commit time (Deno Deploy's clock), from which age-based
//! retention counts. One time far ahead (a server with a wrong clock, a
//! copy tool that stamps its own, an edited object) must neither prune the
//! whole history at once nor hold an object back forever. A time more than
//! [`MAX_AHEAD`] ahead of the local clock is therefore reported (one WARN
//! per object and a counter in `/metrics`) and not used: the settle window
//! counts from when this process first listed the object instead, and
//! retention counts from the newest point that is not ahead (never from
//! later than the local clock, see `Store::prune_history`).

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::metrics;

/// How far ahead of the local clock a time from the bucket may be and still
/// be used. Clocks kept by NTP agree to well under a second; this allows a
/// badly drifting one (S3 itself refuses requests whose signature time is
/// 15 minutes off) while a time a day or a year ahead is plainly wrong.
pub(crate) const MAX_AHEAD: Duration = Duration::from_secs(5 * 60);

/// [`MAX_AHEAD`] in milliseconds.
pub(crate) fn max_ahead_ms() -> i64 {
    MAX_AHEAD.as_millis() as i64
}

/// Which of an object's times is ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ObjectTime {
    /// The object store's `LastModified`.
    LastModified,
    /// The commit time a log object carries.
    CommitTime,
}

impl ObjectTime {
    /// The metric label.
    fn label(self) -> &'static str {
        match self {
            ObjectTime::LastModified => "last_modified",
            ObjectTime::CommitTime => "commit_time",
        }
    }
}

/// Objects are remembered up to this many; past it the memory starts over
/// (a bucket with that many clocks ahead warns again rather than growing
/// without bound).
const REMEMBERED: usize = 10_000;

/// The objects whose times were found ahead, with when this process first
/// saw each: one warning per object, and the local time the settle window
/// counts from.
#[derive(Debug, Default)]
pub(crate) struct BucketClock {
    ahead: Mutex<HashMap<(String, ObjectTime), DateTime<Utc>>>,
}

impl BucketClock {
    /// `None` when `time` (of `object`, seen at local time `now`) may be
    /// used; otherwise when this process first saw the object ahead. The
    /// first sighting of each object warns and counts.
    pub(crate) fn ahead(
        &self,
        object: &dyn Display,
        which: ObjectTime,
        time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let bound = chrono::Duration::from_std(MAX_AHEAD).expect("small duration");
        if time <= now + bound {
            return None;
        }
        let object = object.to_string();
        let mut ahead = self.ahead.lock().expect("bucket clock lock");
        if let Some(first) = ahead.get(&(object.clone(), which)) {
            return Some(*first);
        }
        if ahead.len() >= REMEMBERED {
            ahead.clear();
        }
        ahead.insert((object.clone(), which), now);
        metrics::future_object_time(which.label());
        tracing::warn!(
            object = %object,
            time = %time.to_rfc3339(),
            local_time = %now.to_rfc3339(),
            "{} of {object} is {} ahead of the local clock: not used (check the clocks of \
             the object store and of this host)",
            match which {
                ObjectTime::LastModified => "LastModified",
                ObjectTime::CommitTime => "the commit time",
            },
            humantime::format_duration(Duration::from_secs((time - now).num_seconds().max(0) as u64)),
        );
        Some(now)
    }

    /// The settle guard for a round that started at `started`: whether an
    /// object stored at `last_modified` is older than `settle`. An object
    /// stored "ahead" is judged by when this process first listed it.
    pub(crate) fn settled(
        &self,
        object: &dyn Display,
        last_modified: DateTime<Utc>,
        started: DateTime<Utc>,
        settle: Duration,
    ) -> bool {
        let settle = chrono::Duration::from_std(settle).unwrap_or(chrono::Duration::zero());
        match self.ahead(object, ObjectTime::LastModified, last_modified, started) {
            Some(first_seen) => first_seen + settle <= started,
            None => last_modified < started - settle,
        }
    }

    /// Reports a log object whose commit time is ahead (its points then
    /// never count for age-based retention).
    pub(crate) fn check_commit_time(&self, object: &dyn Display, commit_ms: i64) {
        if let Some(time) = DateTime::<Utc>::from_timestamp_millis(commit_ms) {
            self.ahead(object, ObjectTime::CommitTime, time, Utc::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_ahead_is_reported_once_and_settles_from_first_sight() {
        let clock = BucketClock::default();
        let now = Utc::now();
        let year = chrono::Duration::days(365);
        assert_eq!(clock.ahead(&"a", ObjectTime::LastModified, now, now), None);
        let skewed = now + chrono::Duration::seconds(60);
        assert_eq!(
            clock.ahead(&"a", ObjectTime::LastModified, skewed, now),
            None
        );
        assert_eq!(
            clock.ahead(&"b", ObjectTime::LastModified, now + year, now),
            Some(now)
        );
        let later = now + chrono::Duration::seconds(5);
        assert_eq!(
            clock.ahead(&"b", ObjectTime::LastModified, now + year, later),
            Some(now),
            "remembered from the first sighting"
        );
        let settle = Duration::from_secs(2);
        assert!(!clock.settled(&"c", now + year, now, settle));
        assert!(!clock.settled(&"c", now + year, now + chrono::Duration::seconds(1), settle));
        assert!(clock.settled(&"c", now + year, now + chrono::Duration::seconds(2), settle));
        assert!(clock.settled(&"d", now + year, now, Duration::ZERO));
        // Times not ahead keep the settle rule as it was.
        assert!(!clock.settled(&"e", now, now, Duration::ZERO));
        assert!(clock.settled(&"e", now - chrono::Duration::seconds(3), now, settle));
        assert!(!clock.settled(&"e", now - chrono::Duration::seconds(1), now, settle));
    }
}
