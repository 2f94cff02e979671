import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.concurrent.CompletableFuture;

/**
 * A small Java agent of the kind keyturn holds: it asks a service for its next step with
 * java.net.http.HttpClient, asynchronously, and the client's own threads make the
 * connection, so the agent cannot say in advance which thread connects.
 *
 * <p>Usage: {@code java Agent URL}. Prints {@code pid PID} once its client is built, just
 * before it asks (the test's wait for the hold starts there, not at a JVM start that takes
 * seconds under emulation), then {@code status CODE body BODY} once answered.
 */
public final class Agent {
    private Agent() {}

    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0])).GET().build();
        System.out.println("pid " + ProcessHandle.current().pid());
        CompletableFuture<String> answer = client
            .sendAsync(request, HttpResponse.BodyHandlers.ofString())
            .thenApply(response -> "status " + response.statusCode() + " body " + response.body());
        System.out.println(answer.get());
    }
}
