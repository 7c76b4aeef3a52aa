// psPipeline: the build's stages as one deploy (`ps pipeline`): lease the deploy lock, one started and
// one outcome message, the type recorded in the history as `ps deploy` records it.
//   stage('Begin deploy') { steps { psPipeline(begin: true, type: 'canary-auto') } }   // first change
//   post { success { psPipeline(status: 'success') } failure { psPipeline(status: 'failure') } }
void call(Map cfg = [:]) {
    List vars = ["DEPLOY_TYPE=${cfg.type ?: env.DEPLOY_TYPE ?: 'canary-auto'}", "LOG_URL=${env.BUILD_URL ?: ''}",
                 "PIPELINE_STATUS=${cfg.status ?: 'success'}", 'PS_PIPELINE_END_REPORT_PATH=ps-pipeline.json']
    withEnv(vars) {
        psStep(cfg) {
            if (cfg.begin) {
                sh 'ps pipeline begin --deploy-type "$DEPLOY_TYPE" --log-url "$LOG_URL"'
            } else {
                sh 'ps pipeline end --status "$PIPELINE_STATUS" --deploy-type "$DEPLOY_TYPE" --log-url "$LOG_URL"'
            }
        }
    }
}
