//! The counters the filter keeps in Envoy's stats, all declared here.

/// One counter; its stat name is `<metrics_prefix>.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    LoginsStarted,
    CallbacksOk,
    CallbacksFailed,
    RefreshesOk,
    RefreshesFailed,
    /// Refreshes refused `invalid_grant` while the access token was still valid: another
    /// replica won the race; the current token goes on.
    RefreshesSuperseded,
    /// API calls answered 401 for want of a session.
    Unauthenticated,
    CsrfRejected,
    /// Authorization rules denied the request.
    Forbidden,
    Logouts,
    /// A rule asked for a stronger or fresher login.
    StepUps,
    /// `optional` or `session_or_client` prefixes: requests that went on without a session.
    Anonymous,
    /// Requests authenticated by a bearer token `jwt_authn` verified.
    BearerOk,
    /// Bearer tokens refused (not verified, not accepted on the prefix, or a rule unmet).
    BearerRefused,
    /// Requests sent upstream with the filter's own client token.
    ClientToken,
    ClientTokensFetched,
    ClientTokenFailures,
    /// Store (etcd) calls that failed or answered garbage.
    StoreFailures,
    /// Back-channel logouts recorded, and refused (a bad or replayed logout token).
    BackchannelLogouts,
    BackchannelRefused,
}

impl Counter {
    pub const ALL: [Counter; 20] = [
        Counter::LoginsStarted,
        Counter::CallbacksOk,
        Counter::CallbacksFailed,
        Counter::RefreshesOk,
        Counter::RefreshesFailed,
        Counter::RefreshesSuperseded,
        Counter::Unauthenticated,
        Counter::CsrfRejected,
        Counter::Forbidden,
        Counter::Logouts,
        Counter::StepUps,
        Counter::Anonymous,
        Counter::BearerOk,
        Counter::BearerRefused,
        Counter::ClientToken,
        Counter::ClientTokensFetched,
        Counter::ClientTokenFailures,
        Counter::StoreFailures,
        Counter::BackchannelLogouts,
        Counter::BackchannelRefused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::LoginsStarted => "logins_started",
            Counter::CallbacksOk => "callbacks_ok",
            Counter::CallbacksFailed => "callbacks_failed",
            Counter::RefreshesOk => "refreshes_ok",
            Counter::RefreshesFailed => "refreshes_failed",
            Counter::RefreshesSuperseded => "refreshes_superseded",
            Counter::Unauthenticated => "unauthenticated",
            Counter::CsrfRejected => "csrf_rejected",
            Counter::Forbidden => "forbidden",
            Counter::Logouts => "logouts",
            Counter::StepUps => "step_ups",
            Counter::Anonymous => "anonymous",
            Counter::BearerOk => "bearer_ok",
            Counter::BearerRefused => "bearer_refused",
            Counter::ClientToken => "client_token_used",
            Counter::ClientTokensFetched => "client_tokens_fetched",
            Counter::ClientTokenFailures => "client_token_failures",
            Counter::StoreFailures => "store_failures",
            Counter::BackchannelLogouts => "backchannel_logouts",
            Counter::BackchannelRefused => "backchannel_refused",
        }
    }

    pub fn index(self) -> usize {
        Counter::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indexed() {
        let names: std::collections::HashSet<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Counter::ALL.len());
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }
}
