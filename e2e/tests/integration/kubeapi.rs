//! The Kubernetes API test server against the real `kube` client (list, watch, bookmarks, 410
//! Gone, patches, status) and the real `kubectl --validate=false`.

use std::time::Duration;

use causeway_e2e::kubeapi::KubeApiServer;
use causeway_e2e::wait_for;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn client(api: &KubeApiServer) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("a URL"));
    kube::Client::try_from(config).expect("a client")
}

fn service(name: &str, port: u16) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"ports": [{"name": "http", "port": port}], "selector": {"app": name}},
    }))
    .expect("a Service")
}

fn service_exports(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

#[tokio::test]
async fn kube_client_crud_status_and_patches() -> anyhow::Result<()> {
    let api = KubeApiServer::start().await?;
    let client = client(&api);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "demo"}}))?,
        )
        .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "demo");
    let created = services
        .create(&PostParams::default(), &service("echo", 80))
        .await?;
    let ip = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("a ClusterIP");
    assert!(ip.starts_with("10.96."), "{ip}");

    // Missing namespace: 404, as the real server.
    let elsewhere: Api<Service> = Api::namespaced(client.clone(), "nowhere");
    let err = elsewhere
        .create(&PostParams::default(), &service("x", 80))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );

    // Conflicting update: 409.
    let mut stale = created.clone();
    services
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
        )
        .await?;
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "3".into());
    let err = services
        .replace("echo", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );

    // Server-side apply keeps the ClusterIP and records the manager.
    let applied = services
        .patch(
            "echo",
            &PatchParams::apply("causeway-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "echo"},
                "spec": {"ports": [{"name": "http", "port": 8080}]},
            })),
        )
        .await?;
    let spec = applied.spec.clone().unwrap_or_default();
    assert_eq!(spec.cluster_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(spec.ports.unwrap_or_default()[0].port, 8080);
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["causeway-test"]);

    // The status subresource: a status write leaves the spec, a spec write leaves the status.
    let exports = service_exports(&client, "demo");
    let se: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": "echo"},
        "status": {"conditions": [{"type": "Ignored"}]},
    }))?;
    let se = exports.create(&PostParams::default(), &se).await?;
    assert!(
        se.data.get("status").is_none(),
        "create drops the status: {:?}",
        se.data
    );
    let cond = json!({"type": "Valid", "status": "True", "reason": "Valid", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    exports
        .patch_status(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [cond]}})),
        )
        .await?;
    exports
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": null, "metadata": {"labels": {"a": "b"}}})),
        )
        .await?;
    let got = exports.get("echo").await?;
    assert_eq!(got.data["status"]["conditions"][0]["reason"], "Valid");
    assert_eq!(got.metadata.labels.unwrap_or_default()["a"], "b");

    // Owner references: deleting the owner deletes the dependent.
    let owner = got.metadata.uid.clone().expect("a uid");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "echo-derived", "ownerReferences": [{
                    "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                    "name": "echo", "uid": owner}]},
                "spec": {"ports": [{"port": 80}]},
            }))?,
        )
        .await?;
    exports.delete("echo", &DeleteParams::default()).await?;
    assert!(services.get_opt("echo-derived").await?.is_none());
    assert!(exports.get_opt("echo").await?.is_none());

    // Label selectors.
    services
        .create(&PostParams::default(), &service("other", 81))
        .await?;
    let list = services
        .list(&ListParams::default().labels("app=other"))
        .await?;
    assert_eq!(list.items.len(), 1);
    Ok(())
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes_bookmarks_and_relists_after_410() -> anyhow::Result<()> {
    let api = KubeApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start()
        .await?;
    let client = client(&api);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("a", 80))
        .await?;

    // A reflector's store follows the server through a compaction (410 Gone, relist).
    let (reader, writer) = kube::runtime::reflector::store::<Service>();
    let stream = kube::runtime::reflector(
        writer,
        watcher(services.clone(), watcher::Config::default().timeout(5)),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(_)) = stream.try_next().await {}
    });
    let names = |r: &kube::runtime::reflector::Store<Service>| {
        let mut n: Vec<String> = r
            .state()
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        n.sort();
        n
    };
    wait_for("the reflector to list a", T, || async {
        (names(&reader) == ["a"]).then_some(())
    })
    .await?;
    services
        .create(&PostParams::default(), &service("b", 80))
        .await?;
    wait_for("the reflector to see b", T, || async {
        (names(&reader) == ["a", "b"]).then_some(())
    })
    .await?;

    // Bookmarks were asked for and sent (the watcher's resourceVersion moves with them).
    wait_for("a watch with bookmarks", T, || async {
        api.requests()
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true"))
            .then_some(())
    })
    .await?;

    // A selector watch: an object that stops matching leaves, one that starts matching comes.
    let (selected, selected_w) = kube::runtime::reflector::store::<Service>();
    let stream = kube::runtime::reflector(
        selected_w,
        watcher(services.clone(), watcher::Config::default().labels("app=b")),
    )
    .applied_objects();
    let selector_task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(_)) = stream.try_next().await {}
    });
    wait_for("the selector watch to list b", T, || async {
        (names(&selected) == ["b"]).then_some(())
    })
    .await?;
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    services
        .patch("b", &PatchParams::default(), &relabel("x"))
        .await?;
    wait_for("b to leave the selector watch", T, || async {
        names(&selected).is_empty().then_some(())
    })
    .await?;
    services
        .patch("b", &PatchParams::default(), &relabel("b"))
        .await?;
    wait_for("b to come back", T, || async {
        (names(&selected) == ["b"]).then_some(())
    })
    .await?;
    selector_task.abort();

    api.compact();
    services.delete("a", &DeleteParams::default()).await?;
    services
        .create(&PostParams::default(), &service("c", 80))
        .await?;
    wait_for(
        "the reflector to follow through the compaction",
        T,
        || async { (names(&reader) == ["b", "c"]).then_some(()) },
    )
    .await?;
    task.abort();
    Ok(())
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_gone() -> anyhow::Result<()> {
    let api = KubeApiServer::start().await?;
    let client = client(&api);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &service("a", 80))
        .await?;
    let old = api.resource_version();
    services
        .create(&PostParams::default(), &service("b", 80))
        .await?;

    // From a kept version: the change after it, then live changes.
    let mut events = services
        .watch(
            &kube::api::WatchParams::default().timeout(5),
            &old.to_string(),
        )
        .await?
        .boxed();
    let first = tokio::time::timeout(T, events.try_next())
        .await??
        .expect("an event");
    assert!(
        matches!(first, kube::api::WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("b"))
    );

    api.compact();
    let mut events = services
        .watch(
            &kube::api::WatchParams::default().timeout(5),
            &old.to_string(),
        )
        .await?
        .boxed();
    let first = tokio::time::timeout(T, events.try_next())
        .await??
        .expect("an event");
    match first {
        kube::api::WatchEvent::Error(e) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_applies_gets_patches_and_deletes() -> anyhow::Result<()> {
    let api = KubeApiServer::start().await?;
    let manifest = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: demo
spec:
  ports:
    - name: http
      port: 80
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: echo
  namespace: demo
"#;
    let out = api
        .run_kubectl(&["apply", "--validate=false", "-f", "-"], manifest)
        .await?;
    assert!(out.contains("service/echo created"), "{out}");
    assert!(
        out.contains("serviceexport.multicluster.x-k8s.io/echo created"),
        "{out}"
    );
    assert!(api
        .get(
            "multicluster.x-k8s.io/v1alpha1",
            "serviceexports",
            "demo",
            "echo"
        )
        .is_some());

    // Apply again with a change: client-side apply patches.
    let changed = manifest.replace("port: 80", "port: 8080");
    let out = api
        .run_kubectl(&["apply", "--validate=false", "-f", "-"], &changed)
        .await?;
    assert!(out.contains("service/echo configured"), "{out}");
    let svc = api
        .get("v1", "services", "demo", "echo")
        .expect("the Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);

    // Server-side apply.
    let out = api
        .run_kubectl(
            &[
                "apply",
                "--server-side",
                "--validate=false",
                "--field-manager=ops",
                "-f",
                "-",
            ],
            &manifest.replace("port: 80", "port: 9090"),
        )
        .await?;
    assert!(out.contains("serverside-applied"), "{out}");
    let svc = api
        .get("v1", "services", "demo", "echo")
        .expect("the Service");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);

    let out = api
        .run_kubectl(&["-n", "demo", "get", "serviceexports", "-o", "json"], "")
        .await?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(list["items"][0]["metadata"]["name"], "echo");
    let out = api
        .run_kubectl(
            &[
                "-n",
                "demo",
                "get",
                "svcex",
                "echo",
                "-o",
                "jsonpath={.metadata.name}",
            ],
            "",
        )
        .await?;
    assert_eq!(out, "echo");

    api.run_kubectl(&["-n", "demo", "label", "service", "echo", "team=mesh"], "")
        .await?;
    let svc = api
        .get("v1", "services", "demo", "echo")
        .expect("the Service");
    assert_eq!(svc["metadata"]["labels"]["team"], "mesh");

    let out = api
        .run_kubectl(&["-n", "demo", "delete", "serviceexport", "echo"], "")
        .await?;
    assert!(out.contains("deleted"), "{out}");
    assert!(api
        .get(
            "multicluster.x-k8s.io/v1alpha1",
            "serviceexports",
            "demo",
            "echo"
        )
        .is_none());

    // The chart's CRDs apply too.
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/causeway/crds");
    let out = api
        .run_kubectl(
            &[
                "apply",
                "--validate=false",
                "-f",
                &crds.display().to_string(),
            ],
            "",
        )
        .await?;
    assert!(
        out.contains("serviceexports.multicluster.x-k8s.io created"),
        "{out}"
    );
    Ok(())
}
