// psDeploy: one whole deployment type by `ps deploy` (lock, gates, steps, automatic rollback, report).
//   psDeploy(type: 'canary-auto', service: 'web')
//   psDeploy(type: 'canary-manual', weight: 25)
//   psDeploy(type: 'rollback', to: 'previous')
void call(Map cfg = [:]) {
    List vars = ["SERVICE=${cfg.service ?: env.SERVICE ?: 'web'}",
                 "DEPLOY_TYPE=${cfg.type ?: env.DEPLOY_TYPE ?: 'canary-auto'}"]
    if (cfg.weight != null) {
        vars << "PS_DEPLOY_WEIGHT=${cfg.weight}"
    }
    if (cfg.to) {
        vars << "PS_DEPLOY_TO=${cfg.to}"
    }
    withEnv(vars) {
        psStep(cfg) {
            sh 'ps deploy --type "$DEPLOY_TYPE" --service "$SERVICE" --report ps-report.json'
        }
    }
}
