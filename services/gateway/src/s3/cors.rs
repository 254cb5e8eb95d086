//! CORS: a bucket's rules (PutBucketCors, GetBucketCors, DeleteBucketCors),
//! the answer to a browser's preflight `OPTIONS`, and the
//! `Access-Control-*` headers on the answer to any request with an `Origin`.
//!
//! A preflight is answered before authentication, as S3 does: it carries no
//! credentials, reads no body and grants nothing by itself. The headers on
//! real responses only tell a browser it may show the answer to the page;
//! the request was authorized as any other.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use insitu_catalog::{BucketUpdate, CorsConfig, CorsRule};
use serde::{Deserialize, Serialize};

use super::access::owned_bucket;
use super::{empty_response, xml, xml_response, S3Request};
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::Gateway;

/// S3's limits: a configuration of at most 64 KiB and 100 rules.
const MAX_CORS_BODY_BYTES: usize = 64 * 1024;
const MAX_RULES: usize = 100;
const MAX_ID_CHARS: usize = 255;
const METHODS: [&str; 5] = ["GET", "PUT", "HEAD", "POST", "DELETE"];

/// The wire form of a configuration, both ways.
#[derive(Serialize, Deserialize)]
#[serde(rename = "CORSConfiguration")]
struct CorsConfigurationXml {
    #[serde(rename = "@xmlns", default, skip_deserializing)]
    xmlns: &'static str,
    #[serde(rename = "CORSRule", default)]
    rules: Vec<CorsRuleXml>,
}

#[derive(Serialize, Deserialize)]
struct CorsRuleXml {
    #[serde(rename = "ID", default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "AllowedHeader", default)]
    allowed_headers: Vec<String>,
    #[serde(rename = "AllowedMethod", default)]
    allowed_methods: Vec<String>,
    #[serde(rename = "AllowedOrigin", default)]
    allowed_origins: Vec<String>,
    #[serde(rename = "ExposeHeader", default)]
    expose_headers: Vec<String>,
    #[serde(
        rename = "MaxAgeSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    max_age_seconds: Option<u32>,
}

fn invalid(message: String) -> S3Error {
    S3Error::new(S3ErrorCode::InvalidRequest, message)
}

fn malformed(message: &str) -> S3Error {
    S3Error::new(S3ErrorCode::MalformedXml, message)
}

/// Parses and checks a PutBucketCors body as S3 does.
pub fn parse_config(body: &[u8]) -> S3Result<CorsConfig> {
    let parsed: CorsConfigurationXml = xml::parse(body)?;
    if parsed.rules.is_empty() || parsed.rules.len() > MAX_RULES {
        return Err(malformed(
            "A CORS configuration holds between 1 and 100 CORSRule elements.",
        ));
    }
    let rules = parsed
        .rules
        .into_iter()
        .map(check_rule)
        .collect::<S3Result<Vec<_>>>()?;
    Ok(CorsConfig { rules })
}

fn check_rule(r: CorsRuleXml) -> S3Result<CorsRule> {
    if r.allowed_methods.is_empty() || r.allowed_origins.is_empty() {
        return Err(malformed(
            "Each CORSRule needs at least one AllowedMethod and one AllowedOrigin.",
        ));
    }
    if r.id
        .as_ref()
        .is_some_and(|id| id.chars().count() > MAX_ID_CHARS)
    {
        return Err(invalid("A CORSRule ID is at most 255 characters.".into()));
    }
    if let Some(m) = r
        .allowed_methods
        .iter()
        .find(|m| !METHODS.contains(&m.as_str()))
    {
        return Err(invalid(format!(
            "Found unsupported HTTP method in CORS config. Unsupported method is {m}"
        )));
    }
    for (what, values) in [
        ("AllowedOrigin", &r.allowed_origins),
        ("AllowedHeader", &r.allowed_headers),
    ] {
        if let Some(v) = values.iter().find(|v| v.matches('*').count() > 1) {
            return Err(invalid(format!(
                "{what} \"{v}\" can not have more than one wildcard."
            )));
        }
    }
    if let Some(h) = r.expose_headers.iter().find(|h| h.contains('*')) {
        return Err(invalid(format!(
            "ExposeHeader \"{h}\" contains wildcard. Wildcards are not supported in ExposeHeader."
        )));
    }
    Ok(CorsRule {
        id: r.id,
        allowed_methods: r.allowed_methods,
        allowed_origins: r.allowed_origins,
        allowed_headers: r.allowed_headers,
        expose_headers: r.expose_headers,
        max_age_seconds: r.max_age_seconds,
    })
}

fn config_xml(config: &CorsConfig) -> S3Result<String> {
    let wire = CorsConfigurationXml {
        xmlns: xml::NS,
        rules: config
            .rules
            .iter()
            .map(|r| CorsRuleXml {
                id: r.id.clone(),
                allowed_headers: r.allowed_headers.clone(),
                allowed_methods: r.allowed_methods.clone(),
                allowed_origins: r.allowed_origins.clone(),
                expose_headers: r.expose_headers.clone(),
                max_age_seconds: r.max_age_seconds,
            })
            .collect(),
    };
    let body = quick_xml::se::to_string(&wire).map_err(S3Error::internal)?;
    Ok(format!("{}{body}", xml::HEADER))
}

pub async fn put_bucket_cors(gw: &Arc<Gateway>, mut req: S3Request) -> S3Result<Response> {
    let name = req.bucket()?.to_string();
    let b = owned_bucket(gw, req.principal(), &name).await?;
    let body = req.read_verified_body(MAX_CORS_BODY_BYTES).await?;
    let config = parse_config(&body)?;
    gw.catalog
        .update_bucket(&b, BucketUpdate::Cors(Some(config)))
        .await?;
    Ok(empty_response(StatusCode::OK))
}

pub async fn get_bucket_cors(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let b = owned_bucket(gw, req.principal(), req.bucket()?).await?;
    let Some(config) = b.cors else {
        return Err(S3Error::new(
            S3ErrorCode::NoSuchCorsConfiguration,
            "The CORS configuration does not exist",
        )
        .with_resource(b.name));
    };
    Ok(xml_response(StatusCode::OK, config_xml(&config)?))
}

pub async fn delete_bucket_cors(gw: &Gateway, req: &S3Request) -> S3Result<Response> {
    let b = owned_bucket(gw, req.principal(), req.bucket()?).await?;
    gw.catalog
        .update_bucket(&b, BucketUpdate::Cors(None))
        .await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// Whether `value` matches `pattern`, which holds at most one `*`.
fn wildcard_match(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((prefix, suffix)) => {
            value.len() >= prefix.len() + suffix.len()
                && value.starts_with(prefix)
                && value.ends_with(suffix)
        }
    }
}

/// What a browser asked for: its origin, the method it will use, and (for a
/// preflight) the headers it will send, lower-cased.
struct CorsAsk<'a> {
    origin: &'a str,
    method: &'a str,
    headers: Vec<String>,
}

impl CorsAsk<'_> {
    /// The first rule that allows this origin, method and every header.
    fn rule<'c>(&self, config: &'c CorsConfig) -> Option<&'c CorsRule> {
        config.rules.iter().find(|r| {
            r.allowed_origins
                .iter()
                .any(|o| wildcard_match(o, self.origin))
                && r.allowed_methods.iter().any(|m| m == self.method)
                && self.headers.iter().all(|h| {
                    r.allowed_headers
                        .iter()
                        .any(|a| wildcard_match(&a.to_ascii_lowercase(), h))
                })
        })
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The headers a matched rule puts on an answer. A rule for any origin
/// (`*`) answers `*`; any other names the origin, and says credentials may
/// be sent, as S3 does.
fn allow_headers(rule: &CorsRule, ask: &CorsAsk, preflight: bool) -> Vec<(HeaderName, String)> {
    use axum::http::header::*;
    let any_origin = rule.allowed_origins.iter().any(|o| o == "*");
    let mut out = vec![
        (
            ACCESS_CONTROL_ALLOW_ORIGIN,
            if any_origin { "*" } else { ask.origin }.to_string(),
        ),
        (
            ACCESS_CONTROL_ALLOW_METHODS,
            rule.allowed_methods.join(", "),
        ),
    ];
    if !any_origin {
        out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into()));
    }
    if preflight && !ask.headers.is_empty() {
        out.push((ACCESS_CONTROL_ALLOW_HEADERS, ask.headers.join(", ")));
    }
    if !rule.expose_headers.is_empty() {
        out.push((
            ACCESS_CONTROL_EXPOSE_HEADERS,
            rule.expose_headers.join(", "),
        ));
    }
    if let Some(age) = rule.max_age_seconds {
        out.push((ACCESS_CONTROL_MAX_AGE, age.to_string()));
    }
    let vary = if preflight {
        "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
    } else {
        "Origin"
    };
    out.push((VARY, vary.into()));
    out
}

fn set_headers(resp: &mut Response, headers: Vec<(HeaderName, String)>) {
    for (name, value) in headers {
        // Every value comes from a header the client sent or from a rule
        // that passed parsing; one that still is not a valid header value
        // is left out rather than failing the answer.
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(name, v);
        }
    }
}

/// Answers a preflight `OPTIONS` for `bucket`.
pub async fn preflight(gw: &Gateway, bucket: &str, headers: &HeaderMap) -> Response {
    match preflight_rule(gw, bucket, headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn preflight_rule(gw: &Gateway, bucket: &str, headers: &HeaderMap) -> S3Result<Response> {
    let bad = |m: &str| S3Error::new(S3ErrorCode::BadRequest, m);
    let origin = header_str(headers, "origin")
        .ok_or_else(|| bad("Insufficient information. Origin request header needed."))?;
    let method = header_str(headers, "access-control-request-method")
        .ok_or_else(|| bad("Invalid Access-Control-Request-Method: null"))?;
    let ask = CorsAsk {
        origin,
        method,
        headers: header_str(headers, "access-control-request-headers")
            .unwrap_or("")
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
    };
    let b = gw
        .catalog
        .get_bucket(bucket)
        .await?
        .ok_or_else(|| S3Error::no_such_bucket(bucket))?;
    let forbidden = |m: &str| S3Error::new(S3ErrorCode::AccessForbidden, m);
    let config = b
        .cors
        .ok_or_else(|| forbidden("CORSResponse: CORS is not enabled for this bucket."))?;
    let rule = ask.rule(&config).ok_or_else(|| {
        forbidden(
            "CORSResponse: This CORS request is not allowed. The origin, the method or a requested header is not allowed by the bucket's CORS rules.",
        )
    })?;
    let mut resp = empty_response(StatusCode::OK);
    set_headers(&mut resp, allow_headers(rule, &ask, true));
    Ok(resp)
}

/// Adds the `Access-Control-*` headers to the answer of a request that
/// carried an `Origin`, if a rule of the bucket allows it. The method is the
/// request's own, or the one `Access-Control-Request-Method` names.
pub async fn decorate(
    gw: &Gateway,
    bucket: &str,
    method: &Method,
    headers: &HeaderMap,
    resp: &mut Response,
) {
    let Some(origin) = header_str(headers, "origin") else {
        return;
    };
    // A failed lookup leaves the answer as it is: it only loses the
    // headers a browser needs to show it.
    let Ok(Some(b)) = gw.catalog.get_bucket(bucket).await else {
        return;
    };
    let Some(config) = b.cors else {
        return;
    };
    let ask = CorsAsk {
        origin,
        method: header_str(headers, "access-control-request-method").unwrap_or(method.as_str()),
        headers: Vec::new(),
    };
    if let Some(rule) = ask.rule(&config) {
        set_headers(resp, allow_headers(rule, &ask, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_prefix_and_suffix_without_overlap() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*suffix", "foo.suffix"));
        assert!(!wildcard_match("*suffix", "foo.suffix.get"));
        assert!(wildcard_match("start*end", "startend"));
        assert!(wildcard_match("start*end", "start12end"));
        assert!(!wildcard_match("start*end", "0start12end"));
        assert!(!wildcard_match("ab*ba", "aba"), "prefix and suffix overlap");
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exact2"));
    }

    #[test]
    fn a_configuration_round_trips_and_bad_ones_are_refused() {
        let body = br#"<CORSConfiguration><CORSRule><ID>r</ID><AllowedMethod>GET</AllowedMethod><AllowedMethod>PUT</AllowedMethod><AllowedOrigin>*.example</AllowedOrigin><AllowedHeader>x-amz-*</AllowedHeader><ExposeHeader>ETag</ExposeHeader><MaxAgeSeconds>30</MaxAgeSeconds></CORSRule></CORSConfiguration>"#;
        let config = parse_config(body).unwrap();
        assert_eq!(config.rules[0].allowed_methods, ["GET", "PUT"]);
        let again = parse_config(config_xml(&config).unwrap().as_bytes()).unwrap();
        assert_eq!(again, config);

        let code = |b: &[u8]| parse_config(b).unwrap_err().code;
        assert_eq!(
            code(b"<CORSConfiguration></CORSConfiguration>"),
            S3ErrorCode::MalformedXml
        );
        assert_eq!(
            code(b"<CORSConfiguration><CORSRule><AllowedMethod>PATCH</AllowedMethod><AllowedOrigin>*</AllowedOrigin></CORSRule></CORSConfiguration>"),
            S3ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod><AllowedOrigin>*a*</AllowedOrigin></CORSRule></CORSConfiguration>"),
            S3ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>"),
            S3ErrorCode::MalformedXml
        );
    }

    #[test]
    fn the_first_rule_allowing_origin_method_and_headers_answers() {
        let config = parse_config(br#"<CORSConfiguration>
            <CORSRule><AllowedMethod>GET</AllowedMethod><AllowedOrigin>https://a.example</AllowedOrigin></CORSRule>
            <CORSRule><AllowedMethod>PUT</AllowedMethod><AllowedOrigin>*</AllowedOrigin><AllowedHeader>Content-*</AllowedHeader></CORSRule>
        </CORSConfiguration>"#).unwrap();
        let ask = |origin, method, headers: &[&str]| CorsAsk {
            origin,
            method,
            headers: headers.iter().map(|h| h.to_string()).collect(),
        };
        let id = |a: CorsAsk| {
            a.rule(&config)
                .map(|r| r.allowed_methods[0].clone())
                .unwrap_or_default()
        };
        assert_eq!(id(ask("https://a.example", "GET", &[])), "GET");
        assert_eq!(id(ask("https://b.example", "GET", &[])), "");
        assert_eq!(
            id(ask("https://b.example", "PUT", &["content-type"])),
            "PUT"
        );
        assert_eq!(id(ask("https://a.example", "PUT", &["x-amz-acl"])), "");
        assert_eq!(
            id(ask("https://a.example", "GET", &["x-amz-acl"])),
            "",
            "no headers allowed"
        );
    }
}
