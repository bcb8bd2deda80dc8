//! The federator's etcd helpers against a real etcd.

use causeway_e2e::EtcdServer;
use causeway_federator::etcd::{list_prefix, list_prefix_pages, LIST_PAGE};

/// The federator's paged list: every key once, in order, at the first page's revision, in pages
/// of at most `LIST_PAGE` keys, though keys are written while it runs (the next page is asked
/// for before the caller has taken this one).
#[tokio::test]
async fn a_paged_list_sees_every_key_once_at_one_revision() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut client = etcd.client().await?;
    let total = 2 * LIST_PAGE as usize + 7;
    let mut ops = Vec::new();
    for i in 0..total {
        ops.push(etcd_client::TxnOp::put(
            format!("/p/{i:05}"),
            format!("v{i}"),
            None,
        ));
        if ops.len() == 100 {
            client
                .txn(etcd_client::Txn::new().and_then(std::mem::take(&mut ops)))
                .await?;
        }
    }
    if !ops.is_empty() {
        client.txn(etcd_client::Txn::new().and_then(ops)).await?;
    }
    let mut writer = client.clone();
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    let revision = list_prefix_pages(&mut client, "/p/", false, |kvs| {
        pages.push(kvs.len());
        seen.extend(kvs.iter().map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        }));
    })
    .await?;
    // Written after the list's revision: neither the new key nor the new value is listed.
    writer.put("/p/00000", "changed", None).await?;
    writer.put("/p/zzz", "late", None).await?;
    assert!(pages.iter().all(|&n| n <= LIST_PAGE as usize), "{pages:?}");
    assert_eq!(pages.len(), 3, "{pages:?}");
    let want: Vec<(String, String)> = (0..total)
        .map(|i| (format!("/p/{i:05}"), format!("v{i}")))
        .collect();
    assert_eq!(seen, want);
    let (all, later) = list_prefix(&mut client, "/p/", true).await?;
    assert_eq!(all.len(), total + 1, "a new list sees the late key");
    assert!(later > revision, "{later} > {revision}");
    Ok(())
}

/// Values too large for one gRPC message together (6 of 1 MiB against its 4 MiB limit) are
/// listed in smaller pages, not retried for ever at the same size.
#[tokio::test]
async fn a_list_too_large_for_one_message_is_asked_for_in_smaller_pages() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut client = etcd.client().await?;
    let big = |i: usize| vec![b'a' + i as u8; 1 << 20];
    for i in 0..6 {
        client.put(format!("/big/{i}"), big(i), None).await?;
    }
    let mut pages = 0;
    let mut seen = Vec::new();
    list_prefix_pages(&mut client, "/big/", false, |kvs| {
        pages += 1;
        seen.extend(
            kvs.iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
        );
    })
    .await?;
    assert!(pages >= 2, "{pages} pages");
    assert_eq!(seen.len(), 6);
    for (i, (k, v)) in seen.iter().enumerate() {
        assert_eq!(k, format!("/big/{i}").as_bytes());
        assert!(v == &big(i), "value {i} intact");
    }
    Ok(())
}
