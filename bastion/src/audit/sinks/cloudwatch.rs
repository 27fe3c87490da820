//! CloudWatch Logs: one stream per user, batched PutLogEvents, and a look at the stream's
//! tail after a restart or a failed put so that nothing is delivered twice.

use super::*;

/// CloudWatch Logs: most events and bytes per PutLogEvents (each event costs
/// its message plus 26 bytes), and the longest span of one batch.
const CW_MAX_EVENTS: usize = 10_000;
const CW_MAX_BYTES: usize = 1_048_576;
const CW_EVENT_OVERHEAD: usize = 26;
const CW_MAX_SPAN_MS: i64 = 24 * 3600 * 1000 - 1000;
/// CloudWatch Logs: at most 5 PutLogEvents per second per stream.
const CW_STREAM_INTERVAL: Duration = Duration::from_millis(200);
/// CloudWatch Logs: how many of a stream's last events are compared after a restart or a
/// failed put (whose events may have arrived all the same). Batches are no larger, so a
/// whole batch is always within what is compared.
const CW_DEDUP_TAIL: i32 = 500;
const CW_BATCH_EVENTS: usize = if (CW_DEDUP_TAIL as usize) < CW_MAX_EVENTS {
    CW_DEDUP_TAIL as usize
} else {
    CW_MAX_EVENTS
};

pub(super) struct CloudWatch {
    group: String,
    client: Option<aws_sdk_cloudwatchlogs::Client>,
    /// Streams known to exist, with what their tail already holds (sid, seq),
    /// read once per stream and process.
    streams: HashMap<String, HashSet<(String, u64)>>,
    last_put: HashMap<String, Instant>,
}

impl CloudWatch {
    pub(super) fn new(group: String) -> CloudWatch {
        CloudWatch {
            group,
            client: None,
            streams: HashMap::new(),
            last_put: HashMap::new(),
        }
    }

    /// Creates the stream if needed and reads what its tail already holds.
    fn prepare(&mut self, rt: &tokio::runtime::Runtime, stream: &str) -> Result<(), SinkError> {
        if self.streams.contains_key(stream) {
            return Ok(());
        }
        let client = self
            .client
            .get_or_insert_with(|| aws_sdk_cloudwatchlogs::Client::new(&sdk_config(rt)));
        let group = &self.group;
        let created = rt.block_on(
            client
                .create_log_stream()
                .log_group_name(group)
                .log_stream_name(stream)
                .send(),
        );
        if let Err(e) = created {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_resource_already_exists_exception());
            if !exists {
                return Err(SinkError::aws(
                    "CreateLogStream",
                    format!("{group}/{stream}"),
                )(e));
            }
        }
        let tail = rt
            .block_on(
                client
                    .get_log_events()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .start_from_head(false)
                    .limit(CW_DEDUP_TAIL)
                    .send(),
            )
            .map_err(SinkError::aws("GetLogEvents", format!("{group}/{stream}")))?;
        let held = tail
            .events()
            .iter()
            .filter_map(|e| e.message())
            .map(|m| {
                let l = Line::parse(m.to_string(), 0);
                (l.sid, l.seq)
            })
            .collect();
        self.streams.insert(stream.to_string(), held);
        Ok(())
    }
}

impl Sink for CloudWatch {
    fn name(&self) -> &'static str {
        "cloudwatch"
    }

    fn ship(
        &mut self,
        rt: &tokio::runtime::Runtime,
        trail: &str,
        lines: &[Line],
        _at_start: u64,
    ) -> Result<Shipped, SinkError> {
        self.prepare(rt, trail)?;
        if let Some(t) = self.last_put.get(trail) {
            if let Some(wait) = CW_STREAM_INTERVAL.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let held = self.streams.get(trail).cloned().unwrap_or_default();
        let first_start = lines[0].end - lines[0].text.len() as u64 - 1;
        let (mut events, mut bytes, mut taken) = (Vec::new(), 0usize, first_start);
        let first_ts = lines[0].ts_ms;
        let mut last_ts = first_ts;
        let mut skipped = 0;
        for line in lines {
            if !line.sid.is_empty() && held.contains(&(line.sid.clone(), line.seq)) {
                // Already in the stream (shipped just before a crash).
                taken = line.end;
                skipped += 1;
                continue;
            }
            let size = line.text.len() + CW_EVENT_OVERHEAD;
            if size > CW_MAX_BYTES {
                tracing::warn!(trail, sid = %line.sid, seq = line.seq, bytes = line.text.len(),
                    "audit event too large for CloudWatch Logs; it remains in the local trail only");
                taken = line.end;
                continue;
            }
            // Events must be in time order: a clock step backwards keeps the previous time
            // (the event's own `ts` is in the message).
            let ts = line.ts_ms.max(last_ts);
            if events.len() == CW_BATCH_EVENTS
                || bytes + size > CW_MAX_BYTES
                || ts - first_ts > CW_MAX_SPAN_MS
            {
                break;
            }
            events.push(
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(ts)
                    .message(line.text.clone())
                    .build()
                    .map_err(|e| SinkError::Invalid(e.to_string()))?,
            );
            bytes += size;
            last_ts = ts;
            taken = line.end;
        }
        if skipped > 0 {
            tracing::info!(
                trail,
                skipped,
                "audit events already in CloudWatch were not sent again"
            );
        }
        if events.is_empty() {
            return Ok(Shipped {
                taken,
                durable: taken,
                events: 0,
            });
        }
        let n = events.len() as u64;
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| SinkError::Invalid("no CloudWatch Logs client".into()))?;
        let out = rt
            .block_on(
                client
                    .put_log_events()
                    .log_group_name(&self.group)
                    .log_stream_name(trail)
                    .set_log_events(Some(events))
                    .send(),
            )
            .map_err(SinkError::aws(
                "PutLogEvents",
                format!("{}/{trail}", self.group),
            ));
        let out = match out {
            Ok(out) => out,
            Err(why) => {
                // The stream may have been deleted meanwhile: create it (and read
                // its tail) again on the next attempt.
                self.streams.remove(trail);
                return Err(why);
            }
        };
        self.last_put.insert(trail.to_string(), Instant::now());
        if let Some(r) = out.rejected_log_events_info() {
            tracing::warn!(trail, too_old = ?r.too_old_log_event_end_index(), too_new = ?r.too_new_log_event_start_index(),
                expired = ?r.expired_log_event_end_index(), "CloudWatch Logs rejected some audit events (out of its time window); they remain in the local trail");
        }
        Ok(Shipped {
            taken,
            durable: taken,
            events: n,
        })
    }
}
