// psDeployEnv: run the service's image in one slot, then gate it.
//   psDeployEnv(slot: 'canary', service: 'web')            (a new canary is drained first)
//   psDeployEnv(slot: 'stable', service: 'web', force: true) (replace a slot that carries traffic)
void call(Map cfg = [:]) {
    List vars = ["SERVICE=${cfg.service ?: env.SERVICE ?: 'web'}", "SLOT=${cfg.slot ?: 'canary'}",
                 "HEALTH_RETRIES=${cfg.retries ?: 30}", "PS_DEPLOY_ENV_FORCE=${cfg.force ? 'true' : 'false'}"]
    withEnv(vars) {
        psStep(cfg) {
            if (cfg.drain != false && cfg.slot in [null, 'canary']) {
                sh 'ps set-weights --canary 0 --service "$SERVICE"'
            }
            sh 'ps deploy-env --slot "$SLOT" --service "$SERVICE"'
            sh 'ps health-gate --service "$SERVICE" --slot "$SLOT" --retries "$HEALTH_RETRIES"'
        }
    }
}
