<?php
// Install WordPress unless it is installed. The admin password comes from the Docker secret file
// named by WORDPRESS_ADMIN_PASSWORD_FILE. Exit status: 0 once WordPress is installed (now or
// before), 1 while the database is not ready, 2 when the password file is empty or unreadable.
$_SERVER['HTTP_HOST'] = 'localhost';
define('WP_INSTALLING', true);

// wp-load.php ends the process with an HTML page when the database is unreachable, so check first.
require_once '/etc/wordpress/config-default.php';
mysqli_report(MYSQLI_REPORT_OFF);
$link = @mysqli_connect(DB_HOST, DB_USER, DB_PASSWORD, DB_NAME);
if (!$link) {
    fwrite(STDERR, "swarmlab-wordpress: database not ready: " . mysqli_connect_error() . "\n");
    exit(1);
}
mysqli_close($link);

require '/usr/share/wordpress/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
if (is_blog_installed()) {
    exit(0);
}
$password = rtrim((string) @file_get_contents(getenv('WORDPRESS_ADMIN_PASSWORD_FILE')), "\r\n");
if ($password === '') {
    fwrite(STDERR, "swarmlab-wordpress: the admin password file is empty or unreadable\n");
    exit(2);
}
$result = wp_install('swarmlab', 'admin', 'admin@swarmlab.example', false, '', wp_slash($password));
fwrite(STDERR, "swarmlab-wordpress: installed WordPress, admin user id " . $result['user_id'] . "\n");
exit(0);
