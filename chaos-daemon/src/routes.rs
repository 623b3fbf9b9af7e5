//! Which operation a request names: a pure function of its method, path and query, so that every
//! path can be checked without a daemon. Paths match exactly: no trailing slash is dropped, no
//! segment is decoded, and a name in a path must be a valid fault or experiment name. So
//! `DELETE /v1/faults/` (an empty name) is refused, never taken for `DELETE /v1/faults` (clear),
//! and a query string is refused where none is read (`DELETE /v1/faults?name=x` is not a clear).

use hyper::Method;

use crate::spec::validate_name;

/// Longest path (with its query) a request may name: the longest valid one is far shorter.
pub const MAX_PATH: usize = 256;

/// `limit` of `GET /v1/history` when none is given.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    ListFaults,
    GetFault(String),
    History { limit: usize },
    Apply,
    RemoveFault(String),
    Clear,
    ListExperiments,
    RemoveExperiment(String),
}

impl Route {
    /// Whether it changes faults: the access policy treats those apart.
    pub fn mutating(&self) -> bool {
        matches!(self, Self::Apply | Self::RemoveFault(_) | Self::Clear | Self::RemoveExperiment(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// 404: no endpoint has this path.
    #[error("no endpoint {0} (see the API reference in docs/api.md)")]
    NotFound(String),
    /// 405: the path exists, not with this method.
    #[error("{method} is not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },
    /// 400: a name, query or path that is not valid.
    #[error("{0}")]
    Invalid(String),
}

/// The route `method path?query` names. `path` and `query` are as sent (not decoded).
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    if path.len() + query.map_or(0, |q| q.len() + 1) > MAX_PATH {
        return Err(RouteError::Invalid(format!("the path is longer than {MAX_PATH} bytes")));
    }
    let segments: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Err(RouteError::NotFound(path.into())),
    };
    let named = |kind: &str, name: &str| -> Result<String, RouteError> {
        validate_name(name)
            .map(|()| name.to_owned())
            .map_err(|e| RouteError::Invalid(format!("{kind} name: {}", e.reason)))
    };
    let not_allowed =
        |allowed: &'static str| RouteError::MethodNotAllowed { method: method.to_string(), path: path.into(), allowed };
    let route = match segments.as_slice() {
        ["v1", "status"] => match *method {
            Method::GET => Route::Status,
            _ => return Err(not_allowed("GET")),
        },
        ["v1", "history"] => match *method {
            Method::GET => return Ok(Route::History { limit: history_limit(query)? }),
            _ => return Err(not_allowed("GET")),
        },
        ["v1", "faults"] => match *method {
            Method::GET => Route::ListFaults,
            Method::POST => Route::Apply,
            Method::DELETE => Route::Clear,
            _ => return Err(not_allowed("GET, POST, DELETE")),
        },
        ["v1", "faults", name] => match *method {
            Method::GET => Route::GetFault(named("fault", name)?),
            Method::DELETE => Route::RemoveFault(named("fault", name)?),
            _ => return Err(not_allowed("GET, DELETE")),
        },
        ["v1", "experiments"] => match *method {
            Method::GET => Route::ListExperiments,
            _ => return Err(not_allowed("GET")),
        },
        ["v1", "experiments", name] => match *method {
            Method::DELETE => Route::RemoveExperiment(named("experiment", name)?),
            _ => return Err(not_allowed("DELETE")),
        },
        _ => return Err(RouteError::NotFound(path.into())),
    };
    match query {
        None => Ok(route),
        Some(q) => Err(RouteError::Invalid(format!("{path} takes no query (got '?{q}')"))),
    }
}

/// `limit=N`, the only query `GET /v1/history` reads.
fn history_limit(query: Option<&str>) -> Result<usize, RouteError> {
    let Some(query) = query else { return Ok(DEFAULT_HISTORY_LIMIT) };
    let invalid = |why: String| Err(RouteError::Invalid(why));
    let mut limit = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("limit", n)) if limit.is_none() => match n.parse::<usize>() {
                Ok(n) => limit = Some(n),
                Err(_) => return invalid(format!("limit: '{n}' is not a number")),
            },
            Some(("limit", _)) => return invalid("limit: given twice".into()),
            _ => return invalid(format!("/v1/history reads only limit=N (got '{pair}')")),
        }
    }
    Ok(limit.unwrap_or(DEFAULT_HISTORY_LIMIT))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn exact_paths() {
        let ok = |m: Method, p: &str, q: Option<&str>| route(&m, p, q).unwrap();
        assert_eq!(ok(Method::DELETE, "/v1/faults", None), Route::Clear);
        assert_eq!(ok(Method::DELETE, "/v1/faults/loss-1", None), Route::RemoveFault("loss-1".into()));
        assert_eq!(ok(Method::DELETE, "/v1/experiments/e.1", None), Route::RemoveExperiment("e.1".into()));
        assert_eq!(ok(Method::GET, "/v1/experiments", None), Route::ListExperiments);
        assert_eq!(ok(Method::GET, "/v1/history", Some("limit=5")), Route::History { limit: 5 });
        assert_eq!(ok(Method::GET, "/v1/history", None), Route::History { limit: DEFAULT_HISTORY_LIMIT });
        for (method, path, query) in [
            (Method::DELETE, "/v1/faults/", None),
            (Method::DELETE, "/v1/faults/?", None),
            (Method::DELETE, "/v1/faults", Some("name=x")),
            (Method::DELETE, "/v1/faults", Some("")),
            (Method::DELETE, "/v1/faults/%2F", None),
            (Method::DELETE, "/v1/faults/..", None),
            (Method::DELETE, "/v1/experiments/", None),
            (Method::GET, "/v1/faults/", None),
            (Method::GET, "/v1/history", Some("limit=x")),
            (Method::GET, "/v1/history", Some("limit=1&limit=2")),
            (Method::GET, "/v1/history", Some("all")),
        ] {
            let e = route(&method, path, query).unwrap_err();
            assert!(matches!(e, RouteError::Invalid(_)), "{method} {path} {query:?}: {e:?}");
        }
        for path in ["/v1/faults//", "/v1//faults", "//v1/faults", "/v1/faults/a/b", "v1/faults", "/v2/faults", ""] {
            let e = route(&Method::DELETE, path, None).unwrap_err();
            assert!(matches!(e, RouteError::NotFound(_)), "{path}: {e:?}");
        }
        let e = route(&Method::PUT, "/v1/faults", None).unwrap_err();
        assert_eq!(e.to_string(), "PUT is not allowed on /v1/faults (allowed: GET, POST, DELETE)");
        let long = format!("/v1/faults/{}", "a".repeat(MAX_PATH));
        assert!(matches!(route(&Method::DELETE, &long, None), Err(RouteError::Invalid(_))));
    }

    /// Paths made of the pieces a careless or hostile client would use.
    fn paths() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("v1".to_owned()),
            Just("faults".to_owned()),
            Just("experiments".to_owned()),
            Just("history".to_owned()),
            Just("status".to_owned()),
            Just("..".to_owned()),
            Just("%2F".to_owned()),
            Just("%00".to_owned()),
            Just("loss-1".to_owned()),
            "[ -~]{0,4}",
        ];
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    fn methods() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::DELETE),
            Just(Method::PUT),
            Just(Method::PATCH),
            Just(Method::HEAD),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Only the exact collection paths reach a collection operation; every name a route
        /// carries is a valid name; and a route is never found with a query it does not read.
        #[test]
        fn only_exact_paths_reach_collections(
            method in methods(),
            path in paths(),
            query in prop::option::of("[ -~]{0,8}"),
        ) {
            match route(&method, &path, query.as_deref()) {
                Ok(Route::Clear | Route::ListFaults | Route::Apply) => {
                    prop_assert_eq!(path.as_str(), "/v1/faults");
                    prop_assert!(query.is_none());
                }
                Ok(Route::Status) => prop_assert!(path == "/v1/status" && query.is_none()),
                Ok(Route::ListExperiments) => prop_assert!(path == "/v1/experiments" && query.is_none()),
                Ok(Route::History { .. }) => prop_assert_eq!(path.as_str(), "/v1/history"),
                Ok(Route::GetFault(name) | Route::RemoveFault(name)) => {
                    prop_assert_eq!(path, format!("/v1/faults/{name}"));
                    prop_assert!(validate_name(&name).is_ok() && query.is_none());
                }
                Ok(Route::RemoveExperiment(name)) => {
                    prop_assert_eq!(path, format!("/v1/experiments/{name}"));
                    prop_assert!(validate_name(&name).is_ok() && query.is_none());
                }
                Err(_) => {}
            }
        }
    }
}
