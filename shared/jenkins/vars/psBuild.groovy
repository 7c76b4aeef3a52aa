// psBuild: build the service's image (tag = BUILD_ID from GIT_COMMIT) and push it.
//   psBuild(service: 'web')
void call(Map cfg = [:]) {
    withEnv(["SERVICE=${cfg.service ?: env.SERVICE ?: 'web'}"]) {
        psStep(cfg) {
            sh 'ps build --service "$SERVICE" --dotenv-out build.env'
            sh 'ps push --service "$SERVICE"'
        }
    }
}
