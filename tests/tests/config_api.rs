//! Enrichment configuration over the HTTP API (issue 2), against moto and the Graph emulator.

use integration_tests::*;
use serde_json::{Value, json};

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn stored_enrichments(t: &TestStack) -> usize {
    let (status, body) = t.admin("GET", "/enrichments", None).await;
    assert_eq!(status, 200);
    body["items"].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_resolves_nested_groups_and_lists_users() {
    let t = TestStack::start(small_tenant()).await;
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let (status, created) = t
        .admin("POST", "/enrichments", Some(create_body(&uri)))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "pending_consent");
    // alice + all-sales (bob twice, dave, and us-sales = bob, carol) = 4 distinct mailboxes.
    assert_eq!(created["mailbox_count"], 4);
    assert_eq!(created["version"], 1);
    let id = created["id"].as_str().expect("id").to_string();

    let (status, users) = t
        .admin("GET", &format!("/enrichments/{id}/users"), None)
        .await;
    assert_eq!(status, 200);
    let mut rows: Vec<(String, String)> = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap_or("").to_string(),
                u["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("alice@contoso.com".to_string(), "user".to_string()),
            (
                "bob@contoso.com".to_string(),
                "group:all-sales@contoso.com".to_string()
            ),
            (
                "carol@contoso.com".to_string(),
                "group:all-sales@contoso.com".to_string()
            ),
            (
                "dave@contoso.com".to_string(),
                "group:all-sales@contoso.com".to_string()
            ),
        ]
    );
    let ids: Vec<&str> = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["user_id"].as_str())
        .collect();
    assert!(ids.contains(&ALICE) && ids.contains(&CAROL));

    let (status, list) = t.admin("GET", "/enrichments", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert_eq!(list["items"][0]["status"], "pending_consent");
    let (status, detail) = t.admin("GET", &format!("/enrichments/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(detail["schedule"]["time_zone"], "Europe/London");
    assert!(detail["consent"]["status"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_resolves_by_proxy_address_and_by_group_id() {
    let t = TestStack::start(small_tenant()).await;
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let mut body = create_body(&uri);
    body["mailboxes"] = json!({"users": ["A.Adams@contoso.com"], "groups": [US_SALES]});
    let (status, created) = t.admin("POST", "/enrichments", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["mailbox_count"], 3);
}

/// A refused request: what it is, how it changes a valid body, the field named, a word of the message.
type Case = (
    &'static str,
    Box<dyn Fn(&mut Value)>,
    &'static str,
    &'static str,
);

/// Every refusal names its field and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_store_nothing() {
    let mut tenant = small_tenant();
    // A group too large to learn from: 2,501 members.
    let many: Vec<String> = (0..2501)
        .map(|i| format!("20000000-0000-0000-0000-{i:012}"))
        .collect();
    for (i, id) in many.iter().enumerate() {
        tenant
            .users
            .push(user(id, &format!("seller{i}@contoso.com"), "Seller", false));
    }
    tenant.groups.push(group(
        "30000000-0000-0000-0000-000000000001",
        "everyone@contoso.com",
        &many.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let t = TestStack::start(tenant).await;
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let json_lines = t
        .upload_csv(
            "contacts.jsonl",
            "{\"AccountId\":\"A\",\"Mail\":\"x@y.com\"}\n",
        )
        .await;

    let cases: Vec<Case> = vec![
        (
            "consent not agreed",
            Box::new(|b| b["consent_agreed"] = json!(false)),
            "consent_agreed",
            "agreed",
        ),
        (
            "one address",
            Box::new(|b| b["mailboxes"] = json!({"users": ["alice@contoso.com"]})),
            "mailboxes",
            "1 mailbox",
        ),
        (
            "too many",
            Box::new(|b| b["mailboxes"] = json!({"groups": ["everyone@contoso.com"]})),
            "mailboxes",
            "2501 mailbox",
        ),
        (
            "unknown user",
            Box::new(|b| {
                b["mailboxes"]["users"] = json!(["alice@contoso.com", "nobody@contoso.com"])
            }),
            "mailboxes.users[1]",
            "nobody@contoso.com",
        ),
        (
            "unknown group",
            Box::new(|b| b["mailboxes"]["groups"] = json!(["ghosts@contoso.com"])),
            "mailboxes.groups[0]",
            "ghosts@contoso.com",
        ),
        (
            "missing object",
            Box::new(|b| b["customer_data"]["uri"] = json!("s3://engagement-nowhere/none.csv")),
            "customer_data.uri",
            "cannot be read",
        ),
        (
            "unmapped email field",
            Box::new(|b| b["customer_data"]["email_field"] = json!("Email")),
            "customer_data.email_field",
            "'Email'",
        ),
        (
            "unmapped account field",
            Box::new(move |b| {
                b["customer_data"]["format"] = json!("jsonl");
            }),
            "customer_data.email_field",
            "'EMail'",
        ),
        (
            "bad schedule",
            Box::new(|b| b["schedule"]["time_zone"] = json!("Mars/Olympus")),
            "schedule.time_zone",
            "IANA",
        ),
        (
            "bad day",
            Box::new(|b| b["schedule"]["days"] = json!(["someday"])),
            "schedule.days[0]",
            "someday",
        ),
        (
            "bad exclusion",
            Box::new(|b| b["exclusions"] = json!(["not-an-address"])),
            "exclusions[0]",
            "not-an-address",
        ),
        (
            "weights",
            Box::new(|b| b["score"]["weights"]["email"] = json!(0.9)),
            "score.weights",
            "sum to 1",
        ),
        (
            "wrong type",
            Box::new(|b| b["consent_agreed"] = json!("yes")),
            "consent_agreed",
            "boolean",
        ),
        (
            "missing field",
            Box::new(|b| {
                b.as_object_mut().map(|o| o.remove("name"));
            }),
            "name",
            "missing",
        ),
    ];
    for (what, change, field, says) in cases {
        let mut body = create_body(if what == "unmapped account field" {
            &json_lines
        } else {
            &uri
        });
        change(&mut body);
        let (status, headers, problem) = t
            .call(
                "POST",
                "/enrichments",
                Some(&t.admin.clone()),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(status, 422, "{what}: {problem}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{what}"
        );
        assert!(
            fields(&problem).contains(&field.to_string()),
            "{what}: {problem}"
        );
        let messages = problem["errors"].to_string();
        assert!(
            messages.contains(says),
            "{what}: expected '{says}' in {messages}"
        );
    }
    let response = t
        .http
        .post(t.url("/enrichments"))
        .bearer_auth(&t.admin)
        .body("{not json")
        .send()
        .await
        .expect("api");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        stored_enrichments(&t).await,
        0,
        "a refused request stores nothing"
    );
    let items = t
        .stack
        .services
        .table
        .query("ENRICHMENTS", "", None, None, false)
        .await
        .expect("query");
    assert!(items.items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_versions_are_enforced() {
    let t = TestStack::start(small_tenant()).await;
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let (status, _, problem) = t.call("GET", "/enrichments", None, None, &[]).await;
    assert_eq!(status, 401, "{problem}");
    let (status, _, _) = t
        .call("GET", "/enrichments", Some("forged.token.value"), None, &[])
        .await;
    assert_eq!(status, 401);
    let reader = t.reader.clone();
    let (status, _, problem) = t
        .call(
            "POST",
            "/enrichments",
            Some(&reader),
            Some(create_body(&uri)),
            &[],
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(stored_enrichments(&t).await, 0);

    let (_, created) = t
        .admin("POST", "/enrichments", Some(create_body(&uri)))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    let (status, _, _) = t
        .call(
            "GET",
            &format!("/enrichments/{id}"),
            Some(&reader),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 200, "readers read");

    // Let the consent request settle first: recording it is a change of its own.
    let path = format!("/enrichments/{id}");
    let version = t
        .eventually(20, "consent requested", || async {
            let (_, e) = t.admin("GET", &path, None).await;
            (e["consent"]["status"] == "requested").then(|| e["version"].as_u64().unwrap_or(0))
        })
        .await;
    let mut edit = create_body(&uri);
    edit["name"] = json!("Renamed");
    let admin = t.admin.clone();
    let (status, _, _) = t
        .call("PUT", &path, Some(&admin), Some(edit.clone()), &[])
        .await;
    assert_eq!(status, 428, "an edit needs If-Match");
    let current = version.to_string();
    let (status, headers, updated) = t
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(edit.clone()),
            &[("If-Match", &current)],
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["version"], version + 1);
    assert_eq!(updated["name"], "Renamed");
    assert_eq!(headers["etag"], format!("\"{}\"", version + 1).as_str());
    let (status, _, problem) = t
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(edit.clone()),
            &[("If-Match", &current)],
        )
        .await;
    assert_eq!(status, 412, "{problem}");
    let newest = (version + 1).to_string();
    let (status, _, _) = t
        .call(
            "PUT",
            &path,
            Some(&reader),
            Some(edit),
            &[("If-Match", &newest)],
        )
        .await;
    assert_eq!(status, 403);
    let (_, detail) = t.admin("GET", &path, None).await;
    assert_eq!(
        detail["version"],
        version + 1,
        "refused edits change nothing"
    );

    // Without consent the enrichment cannot be activated.
    let (status, problem) = t
        .admin("POST", &format!("/enrichments/{id}/activate"), None)
        .await;
    assert_eq!(status, 409, "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_everything_stored() {
    let t = TestStack::start(small_tenant()).await;
    let uri = t.upload_csv("contacts.csv", CONTACTS_CSV).await;
    let (_, created) = t
        .admin("POST", "/enrichments", Some(create_body(&uri)))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    // Let the consent request land first (its markers live in the enrichment's partition).
    t.eventually(20, "consent requested", || async {
        let (_, e) = t.admin("GET", &format!("/enrichments/{id}"), None).await;
        (e["consent"]["status"] == "requested").then_some(())
    })
    .await;
    let bucket = t.stack.provisioned.bucket.clone();
    let blobs = t.stack.services.blobs.clone();
    blobs
        .put(
            &bucket,
            &format!("activity/{id}/p00/x.bin"),
            vec![1, 2, 3],
            "application/octet-stream",
        )
        .await
        .expect("put");
    blobs
        .put(
            &bucket,
            &format!("tables/{id}/r1/Office.csv"),
            b"AccountId\n".to_vec(),
            "text/csv",
        )
        .await
        .expect("put");

    let (status, _) = t.admin("DELETE", &format!("/enrichments/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = t.admin("GET", &format!("/enrichments/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = t
        .admin("GET", &format!("/enrichments/{id}/users"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = t.admin("DELETE", &format!("/enrichments/{id}"), None).await;
    assert_eq!(status, 404);
    let left = t
        .stack
        .services
        .table
        .query(&format!("ENR#{id}"), "", None, None, false)
        .await
        .expect("query");
    assert!(
        left.items.is_empty(),
        "left behind: {:?}",
        left.items.iter().map(|i| &i.sk).collect::<Vec<_>>()
    );
    assert!(
        blobs
            .list(&bucket, &format!("activity/{id}/"))
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        blobs
            .list(&bucket, &format!("tables/{id}/"))
            .await
            .expect("list")
            .is_empty()
    );
    // The customer data set is the user's: it stays.
    assert_eq!(
        blobs
            .list(&bucket, "customer-data/")
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(stored_enrichments(&t).await, 0);
}
