use serde_json::json;
use crate::support::chaos::ChaosProxy;
use crate::support::fixtures::{Api, World, config_for};
use crate::support::{TestDb, TestRedis, ctx_for};

#[actix_web::test]
async fn scratch_partition() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let proxy = ChaosProxy::start("127.0.0.1:6379").await;
    let mut cfg = config_for(&db.url, Some(&redis));
    cfg.redis_url = Some(itsur::config::Secret::new(format!("redis://{}", proxy.addr)));
    let ctx_a = itsur::app::Ctx::new(cfg).unwrap();
    let ctx_b = ctx_for(&db.url, Some(&redis));
    World::create(&ctx_b).await;
    let a = Api::new(ctx_a).await;
    let b = Api::new(ctx_b).await;
    let s = b.login("student@a.edu").await;
    assert_eq!(b.get("/me", s.token()).await.status, 200);
    proxy.cut();
    let res = a.post("/auth/logout", s.token(), &json!({})).await;
    eprintln!("logout on A while A cannot reach redis: {}", res.status);
    let res = b.get("/me", s.token()).await;
    eprintln!("B after logout on A: {}", res.status);
}
