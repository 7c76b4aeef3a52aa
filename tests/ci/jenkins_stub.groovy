// A recording stub of Jenkins' declarative pipeline DSL: evaluates a Jenkinsfile once per
// DEPLOY_TYPE and prints, as JSON, the stages that would run and the shell commands of each
// (with the credentials, locks and timeouts around them), plus the `post` blocks.
//
//   groovy tests/ci/jenkins_stub.groovy Jenkinsfile stable,canary-manual [NAME=VALUE ...]
//
// It knows the directives a declarative pipeline uses (pipeline, agent, parameters, triggers,
// options, environment, stages, stage, when, input, steps, post, ...) and the steps this project
// uses (sh, checkout, withCredentials, lock, timeout, archiveArtifacts, echo, ...). An unknown
// step inside `steps` is recorded as such, so a test can refuse it.
//
// It also loads a Jenkins shared library's vars/ (`--library DIR`) and calls one of its globals:
//   groovy tests/ci/jenkins_stub.groovy --library shared/jenkins/vars --call psDeploy type=stable
import groovy.json.JsonOutput

/** What every closure of the DSL can read: params, env and bare environment names. */
class Ctx {
    Map params = [:]
    Map env = [:]

    Object propertyMissing(String name) {
        if (env.containsKey(name)) {
            return env[name]
        }
        throw new MissingPropertyException(name, this.getClass())
    }

    static Object run(Closure body, Object delegate) {
        Closure c = body.rehydrate(delegate, body.owner, body.thisObject)
        c.resolveStrategy = Closure.DELEGATE_FIRST
        return c.call()
    }
}

/** Anything called inside is kept as [name, args] (options, triggers, agent, input ...). */
class Recorder extends Ctx {
    List calls = []

    Object methodMissing(String name, Object args) {
        List list = args as List
        if (list && list[-1] instanceof Closure) {
            Recorder inner = new Recorder(params: params, env: env)
            run(list[-1] as Closure, inner)
            calls << [name: name, args: list[0..-2].collect { plain(it) }, body: inner.calls]
        } else {
            calls << [name: name, args: list.collect { plain(it) }]
        }
        return [name: name]
    }

    Object propertyMissing(String name) {
        if (env.containsKey(name)) {
            return env[name]
        }
        return name  // `agent any`, `agent none`
    }

    static Object plain(Object value) {
        if (value instanceof GString) {
            return value.toString()
        }
        if (value instanceof Map) {
            return value.collectEntries { k, v -> [(k.toString()): plain(v)] }
        }
        if (value instanceof List) {
            return value.collect { plain(it) }
        }
        if (value instanceof Closure) {
            return '<closure>'
        }
        return value
    }
}

class ParametersSpec extends Ctx {
    List items = []

    void choice(Map a) { items << [kind: 'choice', name: a.name, choices: a.choices, default: a.choices[0]] }
    void string(Map a) { items << [kind: 'string', name: a.name, default: a.defaultValue ?: ''] }
    void booleanParam(Map a) { items << [kind: 'boolean', name: a.name, default: a.defaultValue ?: false] }
    void text(Map a) { items << [kind: 'text', name: a.name, default: a.defaultValue ?: ''] }
    void password(Map a) { items << [kind: 'password', name: a.name, default: ''] }
}

class EnvironmentSpec extends Ctx {
    Map values = [:]

    void propertyMissing(String name, Object value) {
        values[name] = value?.toString()
        env[name] = value?.toString()
    }

    Object propertyMissing(String name) {
        if (values.containsKey(name)) {
            return values[name]
        }
        return super.propertyMissing(name)
    }

    String credentials(String id) { return "<credentials:${id}>" }
}

class WhenSpec extends Ctx {
    List conditions = []
    boolean beforeInput = false

    void expression(Closure c) { conditions << { -> Ctx.run(c, new Ctx(params: params, env: env)) as boolean } }
    void beforeInput(boolean value) { beforeInput = value }
    void beforeAgent(boolean value) { }
    void beforeOptions(boolean value) { }
    void branch(String pattern) { conditions << { -> (env.BRANCH_NAME ?: '') ==~ pattern.replace('*', '.*') } }
    void environment(Map a) { conditions << { -> env[a.name] == a.value } }

    void allOf(Closure c) { WhenSpec w = nested(c); conditions << { -> w.holds() } }
    void anyOf(Closure c) { WhenSpec w = nested(c); conditions << { -> w.conditions.any { it() } } }
    void not(Closure c) { WhenSpec w = nested(c); conditions << { -> !w.holds() } }

    WhenSpec nested(Closure c) {
        WhenSpec w = new WhenSpec(params: params, env: env)
        run(c, w)
        return w
    }

    boolean holds() { return conditions.every { it() } }
}

class StageSpec extends Ctx {
    String name
    Closure whenBody
    Closure stepsBody
    Closure inputBody
    Closure optionsBody
    Closure environmentBody
    List<StageSpec> children = []
    Map postBodies = [:]

    void when(Closure c) { whenBody = c }
    void steps(Closure c) { stepsBody = c }
    void input(Closure c) { inputBody = c }
    void options(Closure c) { optionsBody = c }
    void environment(Closure c) { environmentBody = c }
    void agent(Object any) { }
    void stages(Closure c) { run(c, new StagesSpec(into: children)) }
    void parallel(Closure c) { run(c, new StagesSpec(into: children)) }
    void post(Closure c) { PostSpec p = new PostSpec(); run(c, p); postBodies = p.bodies }
}

class StagesSpec extends Ctx {
    List<StageSpec> into

    void stage(String name, Closure c) {
        StageSpec s = new StageSpec(name: name)
        run(c, s)
        into << s
    }
}

class PostSpec extends Ctx {
    Map bodies = [:]

    Object methodMissing(String name, Object args) {
        bodies[name] = (args as List)[0]
        return null
    }
}

/** `steps { ... }`: records sh commands and the wrappers around them. */
class StepsRecorder extends Ctx {
    String stage
    List out
    List credentials = []
    List locks = []
    List timeouts = []

    Object getScm() { return 'scm' }

    void sh(String script) { record('sh', script) }
    void sh(Map a) { record('sh', a.script as String) }
    void checkout(Object what) { record('checkout', what.toString()) }
    void echo(Object text) { record('echo', text.toString()) }
    void archiveArtifacts(Object what) { record('archiveArtifacts', Recorder.plain(what).toString()) }
    void junit(Object what) { record('junit', what.toString()) }
    void error(String message) { record('error', message) }

    Map string(Map a) { return [kind: 'string', id: a.credentialsId, variables: [a.variable]] }
    Map file(Map a) { return [kind: 'file', id: a.credentialsId, variables: [a.variable]] }
    Map usernamePassword(Map a) {
        return [kind: 'usernamePassword', id: a.credentialsId, variables: [a.usernameVariable, a.passwordVariable]]
    }

    void withCredentials(List bindings, Closure body) { wrap(credentials, bindings, body) }
    void lock(Object what, Closure body) { wrap(locks, [what instanceof Map ? what.resource : what], body) }
    void timeout(Map a, Closure body) { wrap(timeouts, [a], body) }
    void withEnv(List pairs, Closure body) {
        Map saved = env
        env = saved + pairs.collectEntries { String p -> p.split('=', 2) as List }
        try { run(body, this) } finally { env = saved }
    }
    void dir(String path, Closure body) { run(body, this) }
    void script(Closure body) { run(body, this) }

    void wrap(List stack, List items, Closure body) {
        stack.addAll(items)
        try {
            run(body, this)
        } finally {
            items.each { stack.remove(stack.size() - 1) }
        }
    }

    void record(String kind, String text) {
        out << [stage: stage, kind: kind, command: text, env: new TreeMap(env),
                credentials: credentials.collect { it }, locks: locks.collect { it },
                timeouts: timeouts.collect { it }]
    }

    Map globals = [:]  // a shared library's vars/, callable like steps

    Object methodMissing(String name, Object args) {
        if (globals.containsKey(name)) {
            return globals[name].invokeMethod('call', args)
        }
        record('unknown', name)
        List list = args as List
        if (list && list[-1] instanceof Closure) {
            run(list[-1] as Closure, this)
        }
        return null
    }
}

class PipelineSpec extends Ctx {
    Recorder agentRec = new Recorder()
    Recorder optionsRec = new Recorder()
    Recorder triggersRec = new Recorder()
    ParametersSpec parametersSpec = new ParametersSpec()
    Closure environmentBody
    List<StageSpec> stageList = []
    Map postBodies = [:]

    void agent(Object any) { agentRec.calls << [name: 'agent', args: [Recorder.plain(any)]] }
    void agent(Closure c) { run(c, agentRec) }
    void parameters(Closure c) { run(c, parametersSpec) }
    void options(Closure c) { run(c, optionsRec) }
    void triggers(Closure c) { run(c, triggersRec) }
    void environment(Closure c) { environmentBody = c }
    void tools(Closure c) { }
    void libraries(Closure c) { }
    void stages(Closure c) { run(c, new StagesSpec(into: stageList)) }
    void post(Closure c) { PostSpec p = new PostSpec(); run(c, p); postBodies = p.bodies }

    Object propertyMissing(String name) { return name }
}

abstract class JenkinsScript extends Script {
    PipelineSpec spec

    void pipeline(Closure body) {
        spec = new PipelineSpec()
        Ctx.run(body, spec)
    }
}

/** Walk the stages for one set of parameters, as Jenkins would, without running anything. */
class Runner {
    PipelineSpec spec
    Map params
    Map env

    Map run() {
        EnvironmentSpec e = new EnvironmentSpec(params: params, env: env)
        if (spec.environmentBody) {
            Ctx.run(spec.environmentBody, e)
        }
        List stages = []
        List steps = []
        walk(spec.stageList, [], stages, steps, [], [])
        Map post = spec.postBodies.collectEntries { String cond, Closure body ->
            List out = []
            Ctx.run(body, new StepsRecorder(stage: "post:${cond}", out: out, params: params, env: env.clone() as Map))
            [(cond): out]
        }
        return [environment: e.values, stages: stages, steps: steps, post: post]
    }

    void walk(List<StageSpec> list, List path, List stages, List steps, List locks, List timeouts) {
        list.each { StageSpec s ->
            List here = path + [s.name]
            Map saved = env
            env = env.clone() as Map
            if (s.environmentBody) {
                Ctx.run(s.environmentBody, new EnvironmentSpec(params: params, env: env))
            }
            boolean ran = true
            if (s.whenBody) {
                WhenSpec w = new WhenSpec(params: params, env: env)
                Ctx.run(s.whenBody, w)
                ran = w.holds()
            }
            Recorder opts = new Recorder(params: params, env: env)
            if (s.optionsBody) {
                Ctx.run(s.optionsBody, opts)
            }
            Recorder input = null
            if (s.inputBody && ran) {
                input = new Recorder(params: params, env: env)
                Ctx.run(s.inputBody, input)
            }
            List stageLocks = locks + opts.calls.findAll { it.name == 'lock' }.collect { lockName(it.args[0]) }
            List stageTimeouts = timeouts + opts.calls.findAll { it.name == 'timeout' }.collect { it.args[0] }
            stages << [name: s.name, path: here, ran: ran, locks: stageLocks, timeouts: stageTimeouts,
                       input: input?.calls, options: opts.calls]
            if (ran) {
                if (s.stepsBody) {
                    StepsRecorder rec = new StepsRecorder(stage: s.name, out: steps, params: params, env: env,
                                                          locks: stageLocks.clone() as List,
                                                          timeouts: stageTimeouts.clone() as List)
                    Ctx.run(s.stepsBody, rec)
                }
                walk(s.children, here, stages, steps, stageLocks, stageTimeouts)
            }
            env = saved
        }
    }

    static String lockName(Object arg) { return arg instanceof Map ? arg.resource : arg }
}

Map parseAssignments(List args) {
    return args.collectEntries { String a ->
        List kv = a.split('=', 2) as List
        [(kv[0]): kv.size() > 1 ? kv[1] : '']
    }
}

Object typed(Object value, Object like) {
    if (like instanceof Boolean) {
        return value in [true, 'true', 'yes', '1']
    }
    return value
}

Map evaluateJenkinsfile(File jenkinsfile, List types, Map overrides) {
    def config = new org.codehaus.groovy.control.CompilerConfiguration()
    config.scriptBaseClass = JenkinsScript.name
    GroovyShell shell = new GroovyShell(this.class.classLoader, new Binding(), config)
    JenkinsScript script = shell.parse(jenkinsfile) as JenkinsScript
    script.run()
    PipelineSpec spec = script.spec
    if (spec == null) {
        throw new IllegalStateException("${jenkinsfile}: no pipeline { } block")
    }
    Map defaults = spec.parametersSpec.items.collectEntries { [(it.name): it.default] }
    Map runs = types.collectEntries { String type ->
        Map params = defaults.clone() as Map
        overrides.each { k, v -> params[k] = typed(v, defaults[k]) }
        if (type) {
            params.DEPLOY_TYPE = type
        }
        Map env = [:]
        params.each { k, v -> env[k] = v.toString() }  // Jenkins exposes parameters as environment variables
        env.putAll(System.getenv().findAll { k, v -> k in ['BUILD_URL', 'JOB_NAME', 'BUILD_NUMBER', 'BRANCH_NAME'] })
        [(type ?: 'default'): new Runner(spec: spec, params: params, env: env).run()]
    }
    return [parameters: spec.parametersSpec.items, options: spec.optionsRec.calls,
            triggers: spec.triggersRec.calls, agent: spec.agentRec.calls, runs: runs]
}

/** Load every vars/*.groovy as a global and call one of them with named arguments. */
Map callLibrary(File vars, String global, Map args) {
    List out = []
    StepsRecorder rec = new StepsRecorder(stage: global, out: out, params: [:], env: [:])
    def config = new org.codehaus.groovy.control.CompilerConfiguration()
    config.scriptBaseClass = LibraryScript.name
    GroovyShell shell = new GroovyShell(this.class.classLoader, new Binding(), config)
    Map globals = rec.globals
    vars.listFiles().findAll { it.name.endsWith('.groovy') }.sort { it.name }.each { File f ->
        LibraryScript s = shell.parse(f) as LibraryScript
        s.init(rec, globals)
        globals[f.name - '.groovy'] = s
    }
    LibraryScript target = globals[global] as LibraryScript
    if (target == null) {
        throw new IllegalArgumentException("no vars/${global}.groovy in ${vars}")
    }
    target.invokeMethod('call', args ? [args] as Object[] : [] as Object[])
    return [call: global, args: args, steps: out]
}

/** A vars/ script: pipeline steps go to the recorder, other globals resolve by name. */
abstract class LibraryScript extends Script {
    StepsRecorder steps
    Map globals

    void init(StepsRecorder recorder, Map all) {
        this.@steps = recorder
        this.@globals = all
    }

    Object methodMissing(String name, Object args) {
        if (globals.containsKey(name)) {
            return globals[name].invokeMethod('call', args)
        }
        return steps.invokeMethod(name, args)
    }

    Object propertyMissing(String name) {
        if (globals.containsKey(name)) {
            return globals[name]
        }
        return steps.getProperty(name)
    }
}

List argv = this.args as List
if (argv && argv[0] == '--library') {
    if (argv.size() < 4 || argv[2] != '--call') {
        System.err.println('usage: jenkins_stub.groovy --library VARS_DIR --call GLOBAL [NAME=VALUE ...]')
        System.exit(2)
    }
    Map named = parseAssignments(argv.drop(4)).collectEntries { k, v -> [(k): v == 'true' ? true : v == 'false' ? false : v] }
    println JsonOutput.prettyPrint(JsonOutput.toJson(callLibrary(new File(argv[1]), argv[3], named)))
} else {
    if (argv.size() < 1) {
        System.err.println('usage: jenkins_stub.groovy JENKINSFILE [TYPE,TYPE...] [NAME=VALUE ...]')
        System.exit(2)
    }
    List types = argv.size() > 1 && argv[1] && !argv[1].contains('=') ? argv[1].split(',') as List : ['']
    List rest = argv.drop(argv.size() > 1 && !argv[1].contains('=') ? 2 : 1)
    println JsonOutput.prettyPrint(JsonOutput.toJson(evaluateJenkinsfile(new File(argv[0]), types, parseAssignments(rest))))
}
