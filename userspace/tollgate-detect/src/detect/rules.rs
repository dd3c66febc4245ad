//! Every rule the per-request detectors report, defined once: id, category,
//! strongest raw score (before the detector's weight) and what it means. The
//! detectors name rules by these constants; `docs/detectors.md` lists the
//! same ids (a test fails when they drift apart).

use super::Category;

/// One detector rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectRule {
    /// Stable id, as events, metrics and `tollgate detect` print it.
    pub id: &'static str,
    /// The detector (and `DetectConfig` switch) it belongs to.
    pub category: Category,
    /// The strongest raw score it gives; weaker contexts give less.
    pub score: u32,
    /// What it reports.
    pub description: &'static str,
}

macro_rules! rules {
    ($($name:ident = $id:literal, $cat:ident, $score:expr, $desc:literal;)*) => {
        $(pub(crate) const $name: &str = $id;)*
        /// Every rule of the per-request detectors.
        pub const RULES: &[DetectRule] = &[$(DetectRule {
            id: $id,
            category: Category::$cat,
            score: $score,
            description: $desc,
        }),*];
    };
}

rules! {
    SQLI_UNION = "sqli.union", Sqli, 10, "UNION SELECT, or a statement glued to the value";
    SQLI_STACKED = "sqli.stacked", Sqli, 10, "a second statement after `;`, or EXEC of a stored procedure";
    SQLI_FUNCTION = "sqli.function", Sqli, 10, "database functions attackers call (file, network, process, version access)";
    SQLI_TIME_BLIND = "sqli.time_blind", Sqli, 10, "time delays: `sleep(`, `pg_sleep(`, `benchmark(`, `WAITFOR DELAY`";
    SQLI_SYSVAR = "sqli.sysvar", Sqli, 10, "server variables such as `@@version`";
    SQLI_FILE_WRITE = "sqli.file_write", Sqli, 10, "`INTO OUTFILE` / `INTO DUMPFILE`";
    SQLI_SUBQUERY = "sqli.subquery", Sqli, 10, "a parenthesised SELECT inside a value";
    SQLI_SELECT = "sqli.select", Sqli, 10, "a SELECT ... FROM statement as the value (short ones are probes; prose scores low)";
    SQLI_TAUTOLOGY = "sqli.tautology", Sqli, 10, "always-true comparisons: `' OR '1'='1`, `OR 1=1` (6 for a bare `or 1`, 2 for a search-like `1950 or 1960`)";
    SQLI_CLAUSE = "sqli.clause", Sqli, 10, "clauses appended to a value: `ORDER BY 3--`, `HAVING 1=1#`";
    SQLI_BLIND_EXTRACTION = "sqli.blind_extraction", Sqli, 10, "character-by-character extraction (`substring(...)` compared)";
    SQLI_ERROR_BASED = "sqli.error_based", Sqli, 10, "functions and casts used to force errors that leak data (`extractvalue`, `updatexml`); PostgreSQL numeric casts (`f(x)::int` 10, `password::int` 6)";
    SQLI_CATALOG = "sqli.catalog", Sqli, 10, "system catalog names (`information_schema`, `mysql.user`, `sys.tables`)";
    SQLI_CONCAT = "sqli.concat", Sqli, 10, "string concatenation breaking out of a quote (`' || f(x) || '`); 6 for `||` and a call after a number (`1 || lpad(user,7,1)`)";
    SQLI_COMMENT_TRUNCATION = "sqli.comment_truncation", Sqli, 10, "a closed quote or statement cut off by a comment (`admin'--`); 6 for a break-out with any SQL operator before the comment (`'or(glob 1)--`)";
    SQLI_NOSQL_OPERATOR = "sqli.nosql_operator", Sqli, 10, "MongoDB operators where a value belongs: `$where`/`$function` (10), comparison and logic operators such as `u[$ne]=`, `{\"$gt\": \"\"}` (6)";
    XSS_TAG = "xss.tag", Xss, 10, "tags that run script or load content (`<script`, `<iframe`, `<svg`, `<object`...)";
    XSS_SCRIPT_URL = "xss.script_url", Xss, 10, "a tag with a `javascript:` / `vbscript:` URL";
    XSS_HTML_TAG = "xss.html_tag", Xss, 4, "another HTML tag with attributes or closed (2 when it sets only layout and link attributes: `class`, `href`, `width`...)";
    XSS_HTML_COMMENT = "xss.html_comment", Xss, 3, "`<!--` or `<![CDATA[` in a value";
    XSS_EVENT_HANDLER = "xss.event_handler", Xss, 10, "an event handler attribute (`onerror=`), also after an attribute break-out";
    XSS_SCRIPT_SINK = "xss.script_sink", Xss, 10, "script sinks and calls: `alert(`, `document.cookie`, `eval(`... (2 when named in a sentence without a break-out)";
    CMDI_SHELLSHOCK = "cmdi.shellshock", Cmdi, 10, "the Shellshock function prefix `() {`";
    CMDI_FUNCTION = "cmdi.function", Cmdi, 10, "a shell function definition";
    CMDI_EXEC_CALL = "cmdi.exec_call", Cmdi, 10, "a call of an exec-style function with shell metacharacters";
    CMDI_SUBSTITUTION = "cmdi.substitution", Cmdi, 10, "command or arithmetic substitution: `$(...)`, backticks, `$((...))`";
    CMDI_BATCH = "cmdi.batch", Cmdi, 10, "Windows batch and PowerShell constructs (`cmd /c`, `%COMSPEC%`)";
    CMDI_GLOB_PATH = "cmdi.glob_path", Cmdi, 10, "glob-obfuscated paths (`/???/c?t`)";
    CMDI_OBFUSCATION = "cmdi.obfuscation", Cmdi, 10, "words split by quotes, backslashes or empty variables (`c''at`), tilde expansion";
    CMDI_MAIL_COMMAND = "cmdi.mail_command", Cmdi, 10, "sendmail/mail argument injection";
    CMDI_VARIABLE_COMMAND = "cmdi.variable_command", Cmdi, 10, "a command built from variables (`$IFS`, `${PATH:0:1}`)";
    CMDI_COMMAND = "cmdi.command", Cmdi, 10, "a known command after a separator (`; cat /etc/passwd`, `| id`); 2 for a word that is also a command followed by plain words (`; more than that`) or a command in a Markdown code span";
    TRAVERSAL_DOTDOT = "traversal.dotdot", Traversal, 10, "`../` sequences, raw or encoded";
    TRAVERSAL_FILE_URL = "traversal.file_url", Traversal, 10, "a `file:` URL";
    TRAVERSAL_ABSOLUTE = "traversal.absolute", Traversal, 6, "a Windows drive path (`c:/windows`)";
    TRAVERSAL_SENSITIVE_FILE = "traversal.sensitive_file", Traversal, 10, "well-known sensitive files (`/etc/passwd`, `win.ini`, `.htaccess`)";
    SSRF_INTERNAL_URL = "ssrf.internal_url", Ssrf, 10, "a URL to an internal, loopback or metadata address (AWS, GCP, Azure and its wire server, Alibaba, Oracle, ECS, Tencent), in every spelling: decimal, octal, hex (also oversized), mixed and shortened IPv4, IPv4-mapped, NAT64 and 6to4 IPv6, names that spell the address (`10.0.0.1.nip.io`, `127-0-0-1.sslip.io`, rebinding pairs `7f000001.c0a80001.rbndr.us`) and loopback-only domains (`lvh.me`)";
    SSRF_INTERNAL_HOST = "ssrf.internal_host", Ssrf, 10, "a bare internal host or metadata address as a value";
    SSRF_SCHEME = "ssrf.scheme", Ssrf, 10, "URL schemes used for forgery: `gopher:`, `dict:`, `netdoc:`, `jar:http`, `unix:` (10); `ldap(s|i):`, `tftp:`, `sftp:`, `php:`, `phar:`, `expect:` (8); `file:` is `traversal.file_url`";
    JNDI_LOOKUP = "jndi.lookup", Jndi, 10, "Log4Shell `${jndi:` lookups";
    JNDI_OBFUSCATED_LOOKUP = "jndi.obfuscated_lookup", Jndi, 10, "nested or obfuscated `${...}` lookups spelling jndi";
    SCANNER_USER_AGENT = "scanner.user_agent", Scanner, 10, "User-Agent naming a known attack tool as its own product token (`sqlmap/1.7`, `Nmap Scripting Engine`; not `python-nmap-client/1.0`)";
    SCANNER_PROBE_PATH = "scanner.probe_path", Scanner, 10, "path segments only scanners ask for, wherever they stand (`/wp-admin`, `/cgi-bin/`, `/actuator/env`), and everyday probe words as the first segment only (`/backup`, `/dump`; `/api/v1/backups/42` is a resource)";
    SCANNER_DOTFILE = "scanner.dotfile", Scanner, 10, "dotfiles and VCS metadata (`/.git/`, `/.env`)";
    SCANNER_BACKUP_FILE = "scanner.backup_file", Scanner, 10, "files by what they disclose: editor leftovers, backups, dumps and key stores (`~`, `#x#`, `.bak`, `.sql`, `.key`) anywhere; logs, configuration and certificates (`.log`, `.conf`, `.pem`) outside an API (2 under `/api/`, `/vN/`); archives 2";
    SMUGGLING_CL_TE = "smuggling.cl_te", Smuggling, 10, "both Content-Length and Transfer-Encoding";
    SMUGGLING_CONFLICTING_CL = "smuggling.conflicting_cl", Smuggling, 10, "Content-Length headers with different values";
    SMUGGLING_DUPLICATE_CL = "smuggling.duplicate_cl", Smuggling, 5, "the same Content-Length twice";
    SMUGGLING_TE_OBFUSCATED = "smuggling.te_obfuscated", Smuggling, 10, "a Transfer-Encoding other than chunked or identity";
    SMUGGLING_TE_DUPLICATE = "smuggling.te_duplicate", Smuggling, 10, "several Transfer-Encoding headers";
    SMUGGLING_TE_HTTP10 = "smuggling.te_http10", Smuggling, 6, "Transfer-Encoding on an HTTP/1.0 request";
    SMUGGLING_DUPLICATE_HOST = "smuggling.duplicate_host", Smuggling, 8, "several Host headers";
    SMUGGLING_HEADER_WHITESPACE = "smuggling.header_whitespace", Smuggling, 10, "whitespace in or around a header name";
    SMUGGLING_EMBEDDED_REQUEST = "smuggling.embedded_request", Smuggling, 10, "a second request line inside the body";
    PROTOCOL_HEADER_INJECTION = "protocol.header_injection", Protocol, 10, "a header value carrying another header";
    PROTOCOL_OVERSIZED_HEADER = "protocol.oversized_header", Protocol, 5, "a header value over the size limit";
    PROTOCOL_TRACE = "protocol.trace", Protocol, 6, "TRACE or TRACK requests";
    PROTOCOL_CRLF = "protocol.crlf", Protocol, 10, "CR or LF in names, the path, or before a header or second body in a value";
    PROTOCOL_NULL_BYTE = "protocol.null_byte", Protocol, 10, "`%00` or a decoded NUL outside the body";
    PROTOCOL_CONTROL_CHAR = "protocol.control_char", Protocol, 5, "other C0 control characters outside the body";
    PROTOCOL_ENCODING = "protocol.encoding", Protocol, 10, "overlong UTF-8, bytes that cannot be UTF-8, IIS `%u`, malformed escapes";
    PROTOCOL_CHARSET = "protocol.charset", Protocol, 10, "several or evasive charsets (UTF-7, UTF-32, EBCDIC)";
    PROTOCOL_CONTENT_TYPE = "protocol.content_type", Protocol, 6, "`boundary=` on a non-multipart Content-Type";
    PROTOCOL_RANGE = "protocol.range", Protocol, 10, "many byte ranges, or obsolete `Request-Range`";
    PROTOCOL_BAD_METHOD = "protocol.bad_method", Protocol, 10, "a method with symbols or digits";
    PROTOCOL_GET_BODY = "protocol.get_body", Protocol, 10, "Transfer-Encoding on GET or HEAD";
    PROTOCOL_COOKIE_SMUGGLING = "protocol.cookie_smuggling", Protocol, 10, "RFC 2109 `$Version` cookies, hiding `;` in quotes";
    PROTOCOL_FRAGMENT = "protocol.fragment", Protocol, 3, "a `#fragment` in the request target";
    PROTOCOL_LDAP_INJECTION = "protocol.ldap_injection", Protocol, 10, "a value closing an LDAP filter and opening another";
    PROTOCOL_UNPARSEABLE = "protocol.unparseable", Protocol, 3, "request bytes on an API port that are neither HTTP/1.x nor TLS";
    PROTOCOL_INFLATE_LIMIT = "protocol.inflate_limit", Protocol, 6, "a gzip/deflate body or gRPC message that inflates past what the detectors read (64 KiB): the rest is not judged (6 when one gRPC message alone fills the budget and inflates past 4 MiB, more than gRPC servers accept by default: a compression bomb; 0, reported only, otherwise: large sparse messages compress past 50:1 too)";
    CODE_PHP = "code.php", Code, 10, "PHP tags, superglobals, stream wrappers, PHP-only functions, code-loading ini directives";
    CODE_JAVA = "code.java", Code, 10, "Java runtime, reflection, class-loading and gadget-chain classes";
    CODE_EXPRESSION = "code.expression", Code, 10, "OGNL, SpEL and EL expressions reaching classes or processes";
    CODE_TEMPLATE = "code.template", Code, 10, "template injection probes and sandbox escapes";
    CODE_JS = "code.js", Code, 10, "Node.js process access (`child_process`, `process.mainModule`)";
    CODE_PROTOTYPE_POLLUTION = "code.prototype_pollution", Code, 10, "`__proto__` and `constructor.prototype` in keys or values";
    CODE_DESERIALIZATION = "code.deserialization", Code, 10, "serialized Java, PHP and node-serialize objects";
    CODE_XXE = "code.xxe", Code, 10, "external or parameter XML entities, entity bombs, external DTDs";
    RFI_URL = "rfi.url", Rfi, 10, "a remote URL to a script passed where a file is included";
    SESSION_FIXATION = "session.fixation", Session, 10, "a session id planted through a parameter, path or cookie-setting value";
    GRAPHQL_MALFORMED = "graphql.malformed", Graphql, 6, "a request to a GraphQL path whose body or document does not parse, or that carries type definitions";
    GRAPHQL_INTROSPECTION = "graphql.introspection", Graphql, 10, "`__schema` / `__type` introspection: reported without score under `introspection: alert` (the default), 10 under `deny`";
    GRAPHQL_DEPTH = "graphql.depth", Graphql, 10, "fields nested deeper than `max_depth` (6; 10 at twice the limit or beyond the parser's own)";
    GRAPHQL_ALIASES = "graphql.aliases", Graphql, 10, "more aliased fields than `max_aliases` (6; 10 at twice the limit)";
    GRAPHQL_FIELDS = "graphql.fields", Graphql, 10, "more fields than `max_fields`, fragments expanded (6; 10 at twice the limit or a fragment bomb)";
    GRAPHQL_DIRECTIVES = "graphql.directives", Graphql, 10, "more directives than `max_directives` (6; 10 at twice the limit)";
    GRAPHQL_BATCH = "graphql.batch", Graphql, 10, "more operations in one JSON array than `max_operations` (6; 10 at twice the limit)";
    GRAPHQL_FRAGMENT_CYCLE = "graphql.fragment_cycle", Graphql, 10, "a fragment spreading itself, directly or through others";
    GRAPHQL_BATCHED_ATTEMPTS = "graphql.batched_attempts", Graphql, 10, "the same mutation called more than `max_attempts` times in one request, by aliases or a batch (6; 10 at twice the limit): brute force past per-request limits";
    GRAPHQL_OPERATOR_OBJECT = "graphql.operator_object", Graphql, 10, "an object key spelled with `$` in variables (`{\"$ne\": null}`): no GraphQL input field can have that name, so it is a MongoDB operator passed through a JSON scalar";
    GRAPHQL_TOO_LARGE = "graphql.too_large", Graphql, 6, "a document longer than `max_tokens` tokens (shape judged on a scan of all of it, the rest on its first 2,000 tokens)";
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::RULES;

    #[test]
    fn ids_are_unique_and_named_after_their_category() {
        let mut seen = BTreeSet::new();
        for r in RULES {
            assert!(seen.insert(r.id), "{} defined twice", r.id);
            let (cat, name) = r.id.split_once('.').unwrap();
            assert_eq!(cat, r.category.as_str(), "{}", r.id);
            assert!(!name.is_empty() && r.score > 0 && !r.description.is_empty());
        }
    }

    /// `docs/detectors.md` documents exactly the rules the detectors report.
    #[test]
    fn the_docs_list_every_rule_and_no_other() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/detectors.md");
        let text = std::fs::read_to_string(path).unwrap();
        let documented: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(id, _)| id)
            .collect();
        let defined: BTreeSet<&str> = RULES.iter().map(|r| r.id).collect();
        let missing: Vec<_> = defined.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&defined).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "docs/detectors.md is missing {missing:?} and lists unknown rules {unknown:?}"
        );
    }
}
