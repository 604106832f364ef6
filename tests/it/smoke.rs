use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_login_identity_phone() {
    let mut gate = start(|_| {}).await;
    let a = gate.get("/hello?x=1", None).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let token = gate.login("alice.1").await;
    let a = gate.get("/me", Some(&token)).await;
    assert_eq!(a.status, 200);
    let r = gate.upstream.last();
    assert_eq!(
        header_str(&r, "x-wx-openid"),
        Some(wxgate::fake::FakeWeixin::openid_for("alice").as_str())
    );
    assert!(r.headers.get("x-wx-session").is_none());
    gate.stop().await;
}
