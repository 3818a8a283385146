//! Plausible values: strings and numbers chosen by field name, and values for each `format`,
//! so that sample data reads like data ("Ada Lovelace", 34, "Lisbon") rather than "string".

pub(super) fn format_value(format: &str, name: &str, variant: u32) -> Option<String> {
    let v = variant;
    let day = 15 + v % 14;
    let s = match format {
        "date-time" => format!("2024-05-{day:02}T09:30:00Z"),
        "date" => format!("2024-05-{day:02}"),
        "time" => format!("09:{:02}:00Z", (30 + v) % 60),
        "email" | "idn-email" => pick(EMAILS, v),
        "uri" | "url" | "iri" => {
            let path = slug(name);
            let path = if path.is_empty() { "page".into() } else { path };
            match v {
                0 => format!("https://example.com/{path}"),
                _ => format!("https://example.com/{path}/{}", v + 1),
            }
        }
        "uri-reference" | "iri-reference" => format!("/docs/page-{}", v + 1),
        "uri-template" => "https://example.com/items/{id}".into(),
        "uuid" => uuid(name, v),
        "ipv4" => format!("192.0.2.{}", 10 + v % 240),
        "ipv6" => format!("2001:db8::{:x}", v + 1),
        "hostname" | "idn-hostname" => match v {
            0 => "api.example.com".into(),
            _ => format!("api{}.example.com", v + 1),
        },
        "duration" => format!("PT{}H30M", 1 + v),
        "json-pointer" => format!("/items/{v}"),
        "relative-json-pointer" => "1/name".into(),
        "regex" => "^[a-z]+$".into(),
        _ => return None,
    };
    Some(s)
}

const EMAILS: &[&str] = &[
    "ada.lovelace@example.com",
    "grace.hopper@example.com",
    "alan.turing@example.com",
];

/// `entries[variant]`, numbered once the entries run out so that array items stay distinct.
fn pick(entries: &[&str], variant: u32) -> String {
    let i = variant as usize;
    match entries.get(i) {
        Some(entry) => entry.to_string(),
        None => format!("{} {}", entries[i % entries.len()], i + 1),
    }
}

/// FNV-1a: a stable hash (std's hasher may change between releases) for ids and uuids.
fn fnv(text: &str, variant: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes().chain(variant.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn uuid(name: &str, variant: u32) -> String {
    let a = fnv(name, variant);
    let b = fnv(&format!("{name}#"), variant);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        8 + (b >> 60) % 4,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

fn slug(name: &str) -> String {
    snake(name).replace('_', "-")
}

/// `firstName`, `First-Name` and `first name` all become `first_name`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        match c {
            '-' | ' ' | '.' => out.push('_'),
            c if c.is_alphanumeric() || c == '_' => out.extend(c.to_lowercase()),
            _ => {}
        }
    }
    out.trim_matches('_').to_string()
}

/// Plausible strings by field name (looked up with [`find`]).
const STRINGS: &[(&[&str], &[&str])] = &[
    (
        &["first_name", "given_name", "firstname"],
        &["Ada", "Grace", "Alan"],
    ),
    (
        &["last_name", "family_name", "surname", "lastname"],
        &["Lovelace", "Hopper", "Turing"],
    ),
    (
        &[
            "name",
            "full_name",
            "author",
            "fullname",
            "display_name",
            "contact",
            "person",
        ],
        &["Ada Lovelace", "Grace Hopper", "Alan Turing"],
    ),
    (
        &["username", "user_name", "login", "handle"],
        &["ada_lovelace", "grace_hopper", "alan_turing"],
    ),
    (&["email", "email_address", "mail"], EMAILS),
    (
        &["phone", "phone_number", "mobile", "telephone", "tel"],
        &["+1 555 0100", "+1 555 0101", "+1 555 0102"],
    ),
    (
        &["title", "headline", "subject"],
        &[
            "A Practical Guide to Streaming",
            "Notes on Failover",
            "Designing Event Logs",
        ],
    ),
    (
        &[
            "description",
            "summary",
            "abstract",
            "bio",
            "about",
            "content",
            "text",
            "body",
            "message",
            "comment",
            "note",
            "explanation",
            "reasoning",
            "answer",
            "final_answer",
            "output",
            "reason",
            "details",
            "overview",
            "caption",
            "step",
        ],
        &[
            "A short example sentence for this field.",
            "Another short example sentence.",
            "A third example sentence.",
        ],
    ),
    (
        &["question", "query", "prompt"],
        &["What is the capital of France?", "How does failover work?"],
    ),
    (&["city", "town"], &["Lisbon", "Berlin", "Toronto"]),
    (&["country"], &["Portugal", "Germany", "Canada"]),
    (&["country_code"], &["PT", "DE", "CA"]),
    (
        &["state", "region", "province"],
        &["California", "Bavaria", "Ontario"],
    ),
    (
        &[
            "address",
            "street",
            "street_address",
            "address_line",
            "line1",
        ],
        &["12 Market Street", "48 Harbour Road", "7 Mill Lane"],
    ),
    (
        &["zip", "zip_code", "postal_code", "postcode"],
        &["10115", "94105", "1100"],
    ),
    (
        &[
            "company",
            "organization",
            "organisation",
            "employer",
            "company_name",
            "publisher",
            "brand",
        ],
        &["Acme Corp", "Globex", "Initech"],
    ),
    (
        &["url", "website", "homepage", "link", "uri", "href"],
        &[
            "https://example.com",
            "https://example.org",
            "https://example.net",
        ],
    ),
    (
        &[
            "image",
            "avatar",
            "photo",
            "picture",
            "thumbnail",
            "image_url",
        ],
        &["https://example.com/image.png"],
    ),
    (
        &["domain", "host", "hostname"],
        &["example.com", "api.example.com"],
    ),
    (&["ip", "ip_address"], &["192.0.2.10", "192.0.2.11"]),
    (&["color", "colour"], &["teal", "orange", "purple"]),
    (&["language", "lang"], &["English", "Portuguese", "German"]),
    (&["locale"], &["en-US", "pt-PT", "de-DE"]),
    (
        &["timezone", "time_zone", "tz"],
        &["Europe/Lisbon", "America/New_York"],
    ),
    (
        &["status", "state_name"],
        &["active", "pending", "archived"],
    ),
    (&["currency", "currency_code"], &["USD", "EUR", "GBP"]),
    (&["sku"], &["SKU-10042", "SKU-10043", "SKU-10044"]),
    (&["code"], &["ABC123", "DEF456", "GHI789"]),
    (&["slug"], &["getting-started", "release-notes", "faq"]),
    (
        &["tag", "keyword", "label", "topic"],
        &["featured", "streaming", "routing"],
    ),
    (&["category", "genre"], &["Books", "Music", "Travel"]),
    (&["type", "kind"], &["standard", "premium", "basic"]),
    (&["role"], &["admin", "editor", "viewer"]),
    (&["version"], &["1.0.0", "1.1.0", "2.0.0"]),
    (&["unit"], &["kg", "cm", "pcs"]),
    (&["sentiment"], &["positive", "neutral", "negative"]),
    (
        &["priority", "level", "severity"],
        &["high", "medium", "low"],
    ),
    (
        &["file", "filename", "file_name", "path"],
        &["report.pdf", "notes.txt", "photo.jpg"],
    ),
    (&["password", "secret"], &["correct-horse-battery-staple"]),
    (
        &["token", "api_key", "key"],
        &["tok_3f9a1c7e2b", "tok_8d2e4f6a1c"],
    ),
    (
        &["date", "birthday", "birth_date", "dob", "due_date"],
        &["2024-05-15", "2024-05-16"],
    ),
    (
        &[
            "created_at",
            "updated_at",
            "timestamp",
            "datetime",
            "created",
            "updated",
        ],
        &["2024-05-15T09:30:00Z", "2024-05-16T09:30:00Z"],
    ),
    (&["time"], &["09:30", "14:00"]),
    (&["gender"], &["female", "male"]),
    (
        &["ingredient", "item", "product"],
        &["flour", "sugar", "butter"],
    ),
];

/// What a generic `name` or `title` is called when its parent field says what the thing is:
/// `company.name` is a company and `ingredients[].name` an ingredient, not a person.
const NAMED_THINGS: &[(&[&str], &[&str])] = &[
    (
        &[
            "company",
            "organization",
            "organisation",
            "employer",
            "publisher",
            "brand",
            "vendor",
        ],
        &["Acme Corp", "Globex", "Initech"],
    ),
    (
        &["product", "item", "line_item", "sku"],
        &["Wireless Mouse", "USB-C Cable", "Desk Lamp"],
    ),
    (&["ingredient"], &["flour", "sugar", "butter"]),
    (&["city", "town"], &["Lisbon", "Berlin", "Toronto"]),
    (&["country"], &["Portugal", "Germany", "Canada"]),
    (&["category", "genre"], &["Books", "Music", "Travel"]),
    (
        &["project", "repository", "repo"],
        &["switchyard", "lighthouse", "atlas"],
    ),
    (
        &["team", "department", "group"],
        &["Platform", "Design", "Support"],
    ),
    (
        &["tool", "function"],
        &["get_weather", "search_docs", "send_email"],
    ),
    (&["skill", "technology"], &["Rust", "SQL", "Kubernetes"]),
    (&["language"], &["English", "Portuguese", "German"]),
    (
        &["book"],
        &["The Pragmatic Programmer", "Refactoring", "Clean Code"],
    ),
    (
        &["course"],
        &["Intro to Databases", "Linear Algebra", "Web Security"],
    ),
    (
        &["event", "meeting"],
        &["Launch Review", "Team Offsite", "Quarterly Planning"],
    ),
    (
        &["place", "location", "venue"],
        &["Central Park", "Harbour Hall", "Old Town Square"],
    ),
    (
        &["pet", "animal", "dog", "cat"],
        &["Biscuit", "Pepper", "Luna"],
    ),
    (
        &["file", "attachment", "document"],
        &["report.pdf", "notes.txt", "photo.jpg"],
    ),
    (
        &["tag", "label", "keyword", "topic"],
        &["featured", "streaming", "routing"],
    ),
];

/// The entry of `table` for a field name: the whole name, its last word, then their singulars
/// (`authors` → `author`).
fn find(table: &[(&[&str], &[&str])], name: &str, variant: u32) -> Option<String> {
    let key = snake(name);
    let last = key.rsplit('_').next().unwrap_or_default();
    let singular = |k: &str| k.strip_suffix('s').map(str::to_string);
    let keys = [
        Some(key.clone()),
        Some(last.to_string()),
        singular(&key),
        singular(last),
    ];
    keys.into_iter().flatten().find_map(|k| {
        let entries = table.iter().find(|(keys, _)| keys.contains(&k.as_str()))?;
        Some(pick(entries.1, variant))
    })
}

pub(super) fn plausible_string(name: &str, parent: &str, variant: u32) -> String {
    let key = snake(name);
    if matches!(key.as_str(), "name" | "title" | "display_name") {
        if let Some(thing) = find(NAMED_THINGS, parent, variant) {
            return thing;
        }
    }
    let one = key.strip_suffix('s').unwrap_or(&key);
    if one == "id" || one.ends_with("_id") || one == "uuid" {
        let prefix = one
            .strip_suffix("_id")
            .filter(|p| !p.is_empty())
            .unwrap_or("id");
        return format!("{prefix}_{:08x}", fnv(one, variant) as u32);
    }
    if let Some(found) = find(STRINGS, name, variant) {
        return found;
    }
    let words = key.replace('_', " ");
    let words = if words.is_empty() {
        "text".into()
    } else {
        words
    };
    match variant {
        0 => format!("sample {words}"),
        v => format!("sample {words} {}", v + 1),
    }
}

/// Plausible numbers by field name (integers are rounded); `1.5` otherwise so that a `number`
/// looks like one.
const NUMBERS: &[(&[&str], f64)] = &[
    (&["age"], 34.0),
    (&["year"], 2024.0),
    (&["month"], 5.0),
    (&["day"], 15.0),
    (
        &[
            "price",
            "cost",
            "amount",
            "total",
            "subtotal",
            "fee",
            "balance",
            "unit_price",
        ],
        19.99,
    ),
    (&["salary", "income", "revenue"], 52000.0),
    (
        &[
            "count", "quantity", "qty", "number", "items", "num", "stock", "copies",
        ],
        3.0,
    ),
    (&["rating", "stars"], 4.5),
    (&["score", "points", "grade"], 87.0),
    (&["latitude", "lat"], 38.7223),
    (&["longitude", "lng", "lon", "long"], -9.1393),
    (&["percent", "percentage", "pct", "progress"], 42.0),
    (&["id", "user_id", "order_id"], 1001.0),
    (
        &[
            "page", "index", "position", "rank", "order", "step", "level", "priority",
        ],
        1.0,
    ),
    (&["limit", "size", "per_page", "page_size"], 10.0),
    (&["duration", "seconds", "timeout", "delay", "ttl"], 30.0),
    (&["minutes"], 15.0),
    (&["temperature"], 0.7),
    (
        &["confidence", "probability", "ratio", "weight_factor"],
        0.9,
    ),
    (&["weight"], 72.5),
    (&["height"], 180.0),
    (&["width"], 1280.0),
    (&["length", "distance"], 12.5),
    (&["tokens", "max_tokens"], 256.0),
];

pub(super) fn plausible_number(name: &str, integer: bool) -> f64 {
    let key = snake(name);
    let last = key.rsplit('_').next().unwrap_or_default().to_string();
    let lookup = |k: &str| {
        NUMBERS
            .iter()
            .find(|(keys, _)| keys.contains(&k))
            .map(|e| e.1)
    };
    let found = lookup(&key)
        .or_else(|| lookup(&last))
        .or_else(|| key.ends_with("_id").then_some(1001.0))
        .or_else(|| lookup(key.strip_suffix('s')?));
    match (found, integer) {
        (Some(n), true) => n.round(),
        (Some(n), false) => n,
        (None, true) => 1.0,
        (None, false) => 1.5,
    }
}
