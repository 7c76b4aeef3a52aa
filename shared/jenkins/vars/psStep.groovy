// psStep: run `ps` steps with the pipeline-steps secrets bound from Jenkins credentials.
//   psStep { sh 'ps status' }
//   psStep(registry: 'my-registry', mattermost: 'mm-hook', gitlab: 'gitlab-token') { ... }
// ps reads REGISTRY_USER / REGISTRY_PASSWORD, MATTERMOST_WEBHOOK_URL and GITLAB_TOKEN from the
// environment and never prints them; PS_CONFIG defaults to ps.yaml.
void call(Map cfg = [:], Closure body) {
    withEnv(["PS_CONFIG=${cfg.config ?: env.PS_CONFIG ?: 'ps.yaml'}"]) {
        withCredentials([usernamePassword(credentialsId: cfg.registry ?: 'registry',
                                          usernameVariable: 'REGISTRY_USER',
                                          passwordVariable: 'REGISTRY_PASSWORD'),
                         string(credentialsId: cfg.mattermost ?: 'mattermost-webhook',
                                variable: 'MATTERMOST_WEBHOOK_URL'),
                         string(credentialsId: cfg.gitlab ?: 'gitlab-token', variable: 'GITLAB_TOKEN')]) {
            body()
        }
    }
}
