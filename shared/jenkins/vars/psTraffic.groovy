// psTraffic: give the canary a share of the traffic and prove nginx carries it.
//   psTraffic(canary: 10, service: 'web')
void call(Map cfg = [:]) {
    withEnv(["SERVICE=${cfg.service ?: env.SERVICE ?: 'web'}", "CANARY_WEIGHT=${cfg.canary ?: 0}"]) {
        psStep(cfg) {
            sh 'ps set-weights --canary "$CANARY_WEIGHT" --service "$SERVICE"'
            sh 'ps verify-weights --expect-canary "$CANARY_WEIGHT" --service "$SERVICE"'
        }
    }
}
