// psNotify: tell Mattermost (and GitLab's commit status) how the run went; never fails the build.
//   post { success { psNotify(status: 'success') } failure { psNotify(status: 'failure') } }
//   psNotify(status: 'failure', aborted: true, message: 'aborted')   (gitlabStatus: false skips GitLab)
void call(Map cfg = [:]) {
    Map gitlabStates = [started: 'running', success: 'success', failure: 'failed', 'rolled-back': 'failed']
    String status = cfg.status ?: 'success'
    List vars = ["NOTIFY_STATUS=${status}", "DEPLOY_TYPE=${cfg.deployType ?: env.DEPLOY_TYPE ?: 'stable'}",
                 "GITLAB_STATE=${cfg.aborted ? 'canceled' : gitlabStates[status] ?: 'failed'}",
                 "LOG_URL=${env.BUILD_URL ?: ''}"]
    if (cfg.message) {
        vars << "PS_MATTERMOST_NOTIFY_MESSAGE=${cfg.message}"
    }
    withEnv(vars) {
        psStep(cfg) {
            sh 'ps mattermost-notify --status "$NOTIFY_STATUS" --deploy-type "$DEPLOY_TYPE" --log-url "$LOG_URL"'
            if (cfg.gitlabStatus != false) {
                sh 'ps gitlab-status --state "$GITLAB_STATE"'
            }
        }
    }
}
