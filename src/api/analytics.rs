//! `GET /v1/analytics`: requests, errors by code, failovers, tokens and latency quantiles per
//! time bucket and per model or provider, read from the aggregates in the store.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AppState, Principal};
use crate::domain::{now_ms, rfc3339};
use crate::error::ApiError;
use crate::store::{Aggregate, Dimension, Series, MINUTE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    bucket: Option<String>,
}

const HOUR: u64 = 3600;
/// Default window: the last hour.
const DEFAULT_SPAN: u64 = HOUR;
/// Most buckets one answer may hold (a day of minutes, two months of hours).
const MAX_BUCKETS: u64 = 1440;

pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<AnalyticsQuery>,
) -> Result<HttpResponse, ApiError> {
    // `none` folds every model into one series, `all` (histograms merge exactly).
    let (dimension, fold) = match query.group_by.as_deref() {
        None => (Dimension::Model, false),
        Some("none") => (Dimension::Model, true),
        Some(s) => (
            Dimension::parse(s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "group_by: must be `model`, `provider` or `none`; got `{s}`"
                ))
            })?,
            false,
        ),
    };
    let (bucket_name, bucket_seconds) = match query.bucket.as_deref() {
        None | Some("minute") => ("minute", MINUTE),
        Some("hour") => ("hour", HOUR),
        Some(s) => {
            return Err(ApiError::invalid(format!(
                "bucket: must be `minute` or `hour`; got `{s}`"
            )))
        }
    };
    let to = match query.to.as_deref() {
        None => now_ms() / 1000 + 1,
        Some(s) => parse_time("to", s)?,
    };
    let from = match query.from.as_deref() {
        None => to.saturating_sub(DEFAULT_SPAN),
        Some(s) => parse_time("from", s)?,
    };
    if from >= to {
        return Err(ApiError::invalid("from: must be earlier than `to`"));
    }
    let from = from / bucket_seconds * bucket_seconds;
    if (to - from).div_ceil(bucket_seconds) > MAX_BUCKETS {
        return Err(ApiError::invalid(format!(
            "to: the range spans more than {MAX_BUCKETS} buckets of one {bucket_name}; \
             narrow `from`..`to` or use a larger `bucket`"
        )));
    }
    let mut groups =
        state
            .store
            .analytics(&principal.project_id, dimension, from, to, bucket_seconds)?;
    if fold {
        let mut all = Series::new();
        for series in groups.values() {
            for (start, agg) in series {
                all.entry(*start).or_default().merge(agg);
            }
        }
        groups.clear();
        if !all.is_empty() {
            groups.insert("all".to_string(), all);
        }
    }
    let series: Vec<Value> = groups
        .iter()
        .map(|(key, buckets)| {
            let buckets: Vec<Value> = buckets
                .iter()
                .map(|(start, agg)| bucket_view(*start, agg))
                .collect();
            json!({"key": key, "buckets": buckets})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "analytics",
        "from": rfc3339(from * 1000),
        "to": rfc3339(to * 1000),
        "bucket_seconds": bucket_seconds,
        "group_by": if fold { "none" } else { dimension.as_str() },
        "series": series,
    })))
}

fn bucket_view(start: u64, agg: &Aggregate) -> Value {
    json!({
        "start": rfc3339(start * 1000),
        "requests": agg.requests,
        "errors": agg.errors,
        "failovers": agg.failovers,
        "tokens": {"prompt": agg.prompt_tokens, "completion": agg.completion_tokens},
        "spend_micros": agg.spend_micros,
        "latency_ms": {"p50": agg.latency_ms.quantile(0.5), "p95": agg.latency_ms.quantile(0.95)},
        "first_chunk_ms": {
            "p50": agg.first_chunk_ms.quantile(0.5),
            "p95": agg.first_chunk_ms.quantile(0.95),
        },
    })
}

/// Unix seconds, or RFC 3339 (`2024-05-01T12:00:00Z`, fractions and `+02:00` offsets allowed;
/// a `+` left unescaped in a query string arrives as a space and is read as `+`).
fn parse_time(name: &str, text: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "{name}: expected RFC 3339 (2024-05-01T12:00:00Z) or unix seconds; got `{text}`"
        ))
    };
    let text = text.trim_start();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map_err(|_| bad());
    }
    if text.len() < 20 || !text.is_ascii() {
        return Err(bad());
    }
    let (base, offset_secs) = if text.ends_with(['Z', 'z']) {
        (&text[..text.len() - 1], 0i64)
    } else {
        let (base, offset) = text.split_at(text.len() - 6);
        let sign = match offset.as_bytes()[0] {
            b'+' | b' ' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let (h, m) = offset[1..].split_once(':').ok_or_else(bad)?;
        let (h, m) = (h.parse::<i64>(), m.parse::<i64>());
        match (h, m) {
            (Ok(h), Ok(m)) if h < 24 && m < 60 => (base, sign * (h * 3600 + m * 60)),
            _ => return Err(bad()),
        }
    };
    if base.as_bytes().get(10) != Some(&b'T') && base.as_bytes().get(10) != Some(&b't') {
        return Err(bad());
    }
    let utc = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let secs = utc
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_secs() as i64;
    u64::try_from(secs - offset_secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("from", "1714564800").unwrap(), 1714564800);
        assert_eq!(
            parse_time("from", "2024-05-01T12:00:00Z").unwrap(),
            1714564800
        );
        assert_eq!(
            parse_time("from", "2024-05-01T12:00:00.750Z").unwrap(),
            1714564800
        );
        assert_eq!(
            parse_time("from", "2024-05-01T14:00:00+02:00").unwrap(),
            1714564800
        );
        assert_eq!(
            parse_time("from", "2024-05-01T14:00:00 02:00").unwrap(),
            1714564800
        );
        assert_eq!(
            parse_time("from", "2024-05-01T10:30:00-01:30").unwrap(),
            1714564800
        );
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "-5",
            "2024-13-01T00:00:00Z",
        ] {
            let err = parse_time("from", bad).unwrap_err();
            assert!(err.body.message.starts_with("from: "), "{bad}");
        }
    }
}
